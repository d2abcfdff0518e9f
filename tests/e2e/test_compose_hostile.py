"""Signed hostile models loaded through the compose stack itself: its real hardening, both topologies.

The stack is compose.yaml as shipped ("default": the loader has no network at all) and, where
compose.pod.yaml exists, the Kubernetes pod topology ("pod": the loader shares MLServer's network
namespace, so loopback reaches MLServer's own port). The stack is changed in one way only: the
loader trusts this test session's local authority (its public trust config replaces the
example's), so the tests can sign what they load. Models go into the stack's own volumes and are
loaded by name over MLServer's REST API, exactly as a user would.

Each case first runs its payload unconfined in a plain container of the loader image (root,
Docker's default capabilities, no seccomp profile) in the same network namespace as the loader
(the host's loopback for the default topology, whose loader has none), and asserts it fired.
Nothing ever leaves this machine: connections go to loopback, UDP to 127.0.0.1:53 sends one
datagram to the namespace's own loopback, and the "outside" case only connects a UDP socket to
a documentation address (198.51.100.1), which sends no packet.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests

from tests import hostile, hostile_predict, support
from tests.controls import EPERM, FIRED, SIGSYS, TECHNIQUES, Outcome, Target, Technique, control_argv, control_outcome
from tests.support import LOADER_IMAGE, MLSERVER_IMAGE, ROOT, SIGNER, Authority

# The parametrization point for topologies: "pod" joins as soon as compose.pod.yaml exists.
TOPOLOGIES = ["default", *(["pod"] if (ROOT / "compose.pod.yaml").exists() else [])]


@dataclass
class HostileStack:
    stack: support.ComposeStack
    authority: Authority

    @property
    def project(self) -> str:
        return self.stack.project

    def container_id(self, service: str) -> str:
        return self.stack.run("ps", "-q", service).stdout.strip()

    def helper(self, script: str, host_dir: Path) -> None:
        """Run `script` as root in a throwaway container with the stack's data volume at /data (rw)."""
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--user", "root", "--entrypoint", "sh",
             "-v", f"{self.project}_example-data:/data", "-v", f"{host_dir}:/in:ro", LOADER_IMAGE, "-c", script],
            check=True, capture_output=True, timeout=120,
        )

    def add_model(self, name: str, data: bytes, execution: str | None = None) -> None:
        """Sign `data` and put it into the stack as model `name` (artefact, bundle, model settings)."""
        self.add_models({name: data}, execution)

    def add_models(self, models: dict[str, bytes], execution: str | None = None) -> None:
        """`add_model` for several models at once (one helper container), with policy `execution` if given."""
        work = Path(tempfile.mkdtemp(prefix="hostile-model-"))
        try:
            work.chmod(0o755)
            for name, data in models.items():
                (work / name).mkdir(mode=0o755)
                (work / name / "model.joblib").write_bytes(data)
                self.authority.sign_file(work / name / "model.joblib")
                policy = {"signers": [{"identity": SIGNER, "issuer": self.authority.issuer}], "trust_root": "local"}
                if execution:
                    policy["execution"] = execution
                settings = {"name": name, "implementation": "runtime.SigstoreModel",
                            "parameters": {"uri": f"/data/artefacts/{name}/model.joblib", "extra": {"sigstore": policy}}}
                (work / name / "model-settings.json").write_text(json.dumps(settings))
                for f in (work / name).iterdir():
                    f.chmod(0o644)
            self.helper(
                " && ".join(
                    f"mkdir -p /data/artefacts/{name} /data/repo/{name} && cp /in/{name}/model.joblib /in/{name}/model.joblib.sigstore.json "
                    f"/data/artefacts/{name}/ && cp /in/{name}/model-settings.json /data/repo/{name}/"
                    for name in models
                ) + " && chmod -R a+rX /data/artefacts /data/repo",
                work,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def control(self, name: str, technique: Technique, target: Target) -> Outcome:
        """Unpickle model `name` unconfined, in the loader's network namespace (or the host's)."""
        network = f"container:{self.container_id('pod')}" if self.stack.topology == "pod" else "host"
        argv = control_argv(f"/data/artefacts/{name}/model.joblib", technique, target, kill_after=technique.control_seconds)
        done = subprocess.run(
            ["docker", "run", "--rm", "--user", "root", "--security-opt", "seccomp=unconfined", "--network", network,
             "-v", f"{self.project}_example-data:/data:ro", "-v", f"{self.project}_loader-socket:/run/loader",
             "--entrypoint", argv[0], LOADER_IMAGE, *argv[1:]],
            capture_output=True, timeout=technique.control_seconds + 60,
        )
        return control_outcome(done.stdout, timed_out=b"CONTROL " not in done.stdout)

    def wait_healthy(self, service: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", self.container_id(service)],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
            if state == "healthy":
                return
            time.sleep(1)
        raise TimeoutError(f"{service} not healthy within {timeout} s")

    def exists(self, service: str, path: str) -> bool:
        return self.stack.exec(service, "test", "-e", path).returncode == 0


@pytest.fixture(scope="module", params=TOPOLOGIES)
def hostile_stack(request: pytest.FixtureRequest, docker_required: None, authority: Authority) -> Iterator[HostileStack]:
    topology = request.param
    if not hasattr(support, "compose_stack"):
        pytest.fail("tests/support.py has no compose_stack helper (the shared compose fixture): update the tree")
    with support.compose_stack(topology, project=f"mlserver-sigstore-hostile-{topology}") as stack:
        hs = HostileStack(stack, authority)
        trust = Path(tempfile.mkdtemp(prefix="hostile-trust-"))
        try:
            shutil.copy(authority.trust_config, trust / "trust_config.json")
            trust.chmod(0o755)
            (trust / "trust_config.json").chmod(0o644)
            hs.helper("cp /in/trust_config.json /data/trust/trust_config.json && chmod a+r /data/trust/trust_config.json", trust)
        finally:
            shutil.rmtree(trust, ignore_errors=True)
        # The loader reads its trust roots at start: restart it, hardening unchanged.
        stack.run("restart", "loader")
        hs.wait_healthy("loader")
        yield hs


# A DNS query for example.org; it goes to a loopback port with nothing behind it but, in the
# default topology, the test's own UDP listener (never to a resolver that could forward it).
_DNS = "b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03org\\x00\\x00\\x01\\x00\\x01'"
NETWORK_CODE: dict[str, str] = {
    "connect-mlserver-loopback": (
        "import socket; s = socket.create_connection(('127.0.0.1', {mlserver}), timeout=2); "
        "s.sendall(b'GET /v2/health/live HTTP/1.0\\r\\n\\r\\n'); r = s.recv(64); raise RuntimeError('FIRED: ' + repr(r))"
    ),
    "dns-udp-loopback": (
        f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); n = s.sendto({_DNS}, ('127.0.0.1', {{dns}})); "
        "raise RuntimeError('FIRED: sent ' + str(n))"
    ),
    "raw-socket": "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); raise RuntimeError('FIRED: ' + repr(s))",
    "udp-connect-outside": (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('198.51.100.1', 9)); "
        "raise RuntimeError('FIRED: route via ' + s.getsockname()[0])"
    ),
}
# From the shared catalogue: code execution, writes to the shared socket volume, secrets, kernel.
SHARED = ["reduce-os-system", "reduce-subprocess", "write-file", "read-parent-environ", "fork-bomb", "io_uring_setup", "userfaultfd", "unshare"]
CASES = sorted([*NETWORK_CODE, *SHARED])


def _technique(case: str, mlserver: int, dns: int) -> Technique:
    if case in NETWORK_CODE:
        code = NETWORK_CODE[case].format(mlserver=mlserver, dns=dns)
        return Technique(lambda t: hostile.run_python(code), "value", (EPERM, SIGSYS))
    return TECHNIQUES[case]


def _refusal(hs: HostileStack, response: requests.Response) -> str:
    """The refusal's message; a non-4xx answer fails with the end of MLServer's and the loader's logs."""
    if not 400 <= response.status_code < 500:
        logs = hs.stack.run("logs", "--tail", "30", "mlserver", "loader", check=False).stdout
        pytest.fail(f"expected a refusal, got {response.status_code}: {response.text[:500]}\n{logs}")
    return str(response.json().get("error", ""))


@contextmanager
def _udp_sink() -> Iterator[int]:
    """A loopback UDP port that takes datagrams and answers nothing."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        yield sink.getsockname()[1]
    finally:
        sink.close()


@pytest.mark.parametrize("case", CASES)
def test_a_signed_hostile_model_is_contained_by_the_compose_service(hostile_stack: HostileStack, case: str) -> None:
    hs = hostile_stack
    pod = hs.stack.topology == "pod"
    name = f"hostile-{case}"
    canary = f"/run/loader/pwnd-{case}"
    with _udp_sink() as sink:
        # MLServer's REST port and a silent UDP port, as the loader's namespace sees them: the
        # pod's loopback (MLServer on 8080, nothing on 53), or the host's for the default topology.
        technique = _technique(case, 8080 if pod else hs.stack.http, 53 if pod else sink)
        target = Target(canary=canary, scratch="/tmp", port=0, unix_socket="/run/loader/loader.sock")
        hs.add_model(name, technique.build(target))
        control = hs.control(name, technique, target)
    assert technique.fired(target, control), f"the payload did not fire unconfined: {control}"
    hs.helper(f"rm -f /data/artefacts/{name}/pwnd", Path(tempfile.gettempdir()))
    subprocess.run(["docker", "run", "--rm", "--user", "root", "--network", "none", "-v", f"{hs.project}_loader-socket:/run/loader",
                    "--entrypoint", "rm", LOADER_IMAGE, "-f", canary], check=True, capture_output=True, timeout=60)

    response = hs.stack.load(name)
    error = _refusal(hs, response)
    assert any(reason in error for reason in technique.refusal), error
    assert FIRED not in error
    assert not hs.exists("loader", canary) and not hs.exists("mlserver", canary)
    assert requests.get(f"{hs.stack.url}/v2/health/ready", timeout=10).status_code == 200


def test_a_forged_pickle_result_never_runs_in_mlserver(hostile_stack: HostileStack) -> None:
    """The serving-process canary: the forged result would touch MLServer's /tmp and working folder.

    Control: the forged bytes, unpickled naively (pickle.loads) in a throwaway MLServer-image
    process, create the markers; through the stack the load is refused and neither appears.
    """
    hs = hostile_stack
    markers = ["/tmp/serving-canary", "serving-canary"]  # MLServer's temp folder and its cwd
    forged = hostile.os_system("touch " + " ".join(markers))
    naive = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", "none", "--entrypoint", "sh", MLSERVER_IMAGE, "-c",
         "python -c 'import pickle, sys; pickle.loads(sys.stdin.buffer.read())' && ls " + " ".join(markers)],
        input=forged, capture_output=True, timeout=120,
    )
    assert naive.returncode == 0, f"the forged result did not fire when unpickled naively: {naive.stderr[-500:]!r}"

    hs.add_model("forged-pickle", hostile.forged_result(forged))
    response = hs.stack.load("forged-pickle")
    error = _refusal(hs, response)
    assert response.status_code == 422 and "not a skops archive" in error, (response.status_code, error)
    for marker in markers:
        assert not hs.exists("mlserver", marker), f"{marker} appeared in MLServer"


# --- models acting at predict time (tests/hostile_predict.py), in the stack as shipped -----------
# The host tier runs every technique against a loader with small limits; here the stack keeps its
# own (compose.yaml: a worker may map 2 GiB over its image, answers up to 64 MiB, a 30 s deadline),
# so the techniques that cross a limit are sized past those.
PREDICT_CASES = [
    "network", "file-write", "file-read", "exec", "fork", "signal-parent", "sleep-past-deadline",
    "allocate-past-limit", "sigsegv", "object-array", "wrong-row-count", "huge-output",
]
_ZEROS = "return np.zeros(len(X))"
PREDICT_OVERRIDES = {
    # Connects to MLServer's REST port as the loader's namespace sees it: fired when it connects.
    "network": lambda technique: replace(technique, fired=lambda t, s: s.shape == [hostile_predict.ROWS] and not s.error),
    # Reserves 3 GiB (np.empty maps without touching): past the worker's 2 GiB, not the host's memory.
    "allocate-past-limit": lambda technique: replace(technique, body=lambda t: f"kept = np.empty(3 << 30, np.uint8)\n{_ZEROS}"),
    # 2 rows of 5,000,000 float64: 80 MB, over the 64 MiB answer limit.
    "huge-output": lambda technique: replace(
        technique, body=lambda t: "return np.ones((len(X), 5_000_000))", fired=lambda t, s: s.shape == [hostile_predict.ROWS, 5_000_000]
    ),
}
SECRET = "/data/secret-predict"  # holds "secret" (6 bytes), in the data volume the loader mounts read-only


def _predict_technique(case: str) -> hostile_predict.PredictTechnique:
    technique = hostile_predict.TECHNIQUES[case]
    return PREDICT_OVERRIDES[case](technique) if case in PREDICT_OVERRIDES else technique


def _predict_controls(hs: HostileStack, cases: dict[str, tuple[hostile_predict.PredictTechnique, hostile_predict.Target]]) -> dict[str, hostile_predict.Seen]:
    """Predict with each model unconfined, one after the other in one plain container of the
    loader image (root, no seccomp profile, in the loader's network namespace or the host's),
    each under `timeout`; whether its canary appeared is checked (and removed) after each."""
    network = f"container:{hs.container_id('pod')}" if hs.stack.topology == "pod" else "host"
    script = ""
    for case, (technique, target) in cases.items():
        script += (f'echo "CASE {case}"; timeout -s KILL {technique.control_seconds:g} python -c "$CONTROL" '
                   f'/data/artefacts/predict-{case}/model.joblib; echo "EXIT $?"; '
                   f'if [ -e {target.canary} ]; then echo CANARY; rm -f {target.canary}; fi; ')
    done = subprocess.run(
        ["docker", "run", "--rm", "--user", "root", "--security-opt", "seccomp=unconfined", "--network", network,
         "-e", f"CONTROL={hostile_predict.CONTROL}", "-e", f"CONTROL_ADDRESS_SPACE={8 << 30}",
         "-v", f"{hs.project}_example-data:/data:ro", "-v", f"{hs.project}_loader-socket:/run/loader",
         "--entrypoint", "sh", LOADER_IMAGE, "-c", script],
        capture_output=True, timeout=600,
    )
    seen = {}
    for chunk in done.stdout.split(b"CASE ")[1:]:
        case, _, out = chunk.partition(b"\n")
        found = hostile_predict.seen_in(out, timed_out=False)
        found.timed_out = found.exit_status == 137  # killed by `timeout`
        found.canary = b"\nCANARY\n" in out
        seen[case.decode()] = found
    assert set(seen) == set(cases), f"the controls did not all run: {done.stdout[-2000:]!r} {done.stderr[-2000:]!r}"
    return seen


def _restarts(hs: HostileStack, service: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.RestartCount}} {{.State.StartedAt}}", hs.container_id(service)],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def test_models_acting_at_predict_time_are_contained_while_others_serve(hostile_stack: HostileStack) -> None:
    """Every predict-time technique, its unconfined control first, then all of them at once through
    MLServer's REST API while a good model handed back and the same served in the sandbox answer
    correctly throughout; neither the loader nor MLServer restarts."""
    import io
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    hs = hostile_stack
    pod = hs.stack.topology == "pod"
    started = time.monotonic()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    good = LogisticRegression().fit(x, y)
    buffer = io.BytesIO()
    joblib.dump(good, buffer)

    cases = {}
    for case in PREDICT_CASES:
        technique = _predict_technique(case)
        target = hostile_predict.Target(canary=f"/run/loader/pwnd-predict-{case}", secret=SECRET,
                                        port=8080 if pod else hs.stack.http, bystander_pid=1)
        cases[case] = (technique, target)
    secret = Path(tempfile.mkdtemp(prefix="predict-secret-"))
    try:
        (secret / "secret").write_text("secret")
        secret.chmod(0o755)
        (secret / "secret").chmod(0o644)
        hs.helper(f"cp /in/secret {SECRET} && chmod a+r {SECRET}", secret)
    finally:
        shutil.rmtree(secret, ignore_errors=True)
    hs.add_models({f"predict-{case}": hostile_predict.acting_at_predict(t.body(target)) for case, (t, target) in cases.items()}, "sandbox")
    hs.add_models({"bystander-sandboxed": buffer.getvalue()}, "sandbox")
    hs.add_models({"bystander-server": buffer.getvalue()}, "server")

    seen = _predict_controls(hs, cases)
    for case, (technique, target) in cases.items():
        assert technique.fired(target, seen[case]), f"{case}: the payload did not fire unconfined: {seen[case]}"
    controls_done = time.monotonic()

    before = {service: _restarts(hs, service) for service in ("loader", "mlserver")}
    for name in ["bystander-server", "bystander-sandboxed", *(f"predict-{case}" for case in cases)]:
        response = hs.stack.load(name)
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text[:500]}"

    def infer(name: str, rows: np.ndarray) -> requests.Response:
        payload = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
        return requests.post(f"{hs.stack.url}/v2/models/{name}/infer", json=payload, timeout=120)

    hostile_done = threading.Event()
    bystander_answers: list[str] = []

    def bystanders() -> None:
        while True:
            for name in ("bystander-server", "bystander-sandboxed"):
                rows, expected = x[:5], good.predict(x[:5]).tolist()
                response = infer(name, rows)
                ok = response.status_code == 200 and response.json()["outputs"][0]["data"] == expected
                bystander_answers.append("ok" if ok else f"{name}: {response.status_code} {response.text[:300]}")
            if hostile_done.wait(0.05):  # a pace, not a synchronisation: ends when the hostile answers are in
                return

    with ThreadPoolExecutor(max_workers=len(cases) + 1) as pool:
        keeping = pool.submit(bystanders)
        answers = dict(zip(cases, pool.map(lambda case: infer(f"predict-{case}", np.ones((hostile_predict.ROWS, 3))), cases), strict=True))
        hostile_done.set()
        keeping.result()

    for case, (technique, target) in cases.items():
        response = answers[case]
        error = str(response.json().get("error", "")) if response.headers.get("content-type", "").startswith("application/json") else response.text
        print(f"{hs.stack.topology} {case}: control {seen[case]}; contained: {response.status_code} {error[:200]}")
        assert response.status_code in technique.status, f"{case}: {response.status_code} {error}"
        assert any(reason in error for reason in technique.refusal), f"{case}: {error}"
        assert not hs.exists("loader", target.canary) and not hs.exists("mlserver", target.canary), case
    assert bystander_answers and set(bystander_answers) == {"ok"}, [a for a in bystander_answers if a != "ok"]
    assert {service: _restarts(hs, service) for service in ("loader", "mlserver")} == before
    assert requests.get(f"{hs.stack.url}/v2/health/ready", timeout=10).status_code == 200
    print(f"{hs.stack.topology}: predict-time cases took {time.monotonic() - started:.1f} s "
          f"(controls {controls_done - started:.1f} s), {len(bystander_answers)} bystander answers")
