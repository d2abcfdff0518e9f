"""The compose stack end to end, in three topologies: the default one (the loader has no network
at all), the Kubernetes pod topology (compose.pod.yaml: the loader shares MLServer's network
and IPC namespaces, the socket volume is the only shared writable channel) and gVisor
(compose.gvisor.yaml: the loader under runsc). The walkthrough runs in all three; the soak and
the restart run in the default one only, to keep CI short."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
import requests
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from sklearn import datasets

from tests.support import ROOT, ComposeError, ComposeStack, compose_stack

PROJECT = "mlserver-sigstore-e2e"
TOPOLOGIES = ["default", "pod", "gvisor"]
DIGITS = datasets.load_digits()
SAMPLE = DIGITS.images.reshape((len(DIGITS.images), -1))[-6:]
EXPECTED = DIGITS.target[-6:].tolist()
Compose = ComposeStack
# Run inside a container: every file under its mounts (volumes, tmpfs, binds) that holds a PEM
# private key and that the container's user can read. Prints the mounts scanned to stderr.
KEY_SCAN = r"""
import os, sys
mounts = sorted({line.split()[4] for line in open("/proc/self/mountinfo")} - {"/"})
mounts = [m for m in mounts if not m.startswith(("/proc", "/sys", "/dev"))]
found = []
for top in mounts:
    paths = [top] if os.path.isfile(top) else (os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs)
    for path in paths:
        try:
            with open(path, "rb") as handle:
                if b"PRIVATE KEY-----" in handle.read(1 << 16):
                    found.append(path)
        except OSError:
            pass
print(" ".join(mounts), file=sys.stderr)
print("\n".join(found))
"""


@pytest.fixture(scope="module", params=TOPOLOGIES)
def stack(request: pytest.FixtureRequest, docker_required: None) -> Iterator[Compose]:
    try:
        with compose_stack(request.param, f"{PROJECT}-{request.param}") as running:
            yield running
    except ComposeError as err:
        pytest.fail(str(err))


def test_the_index_lists_the_three_models(stack: Compose) -> None:
    index = requests.post(f"{stack.url}/v2/repository/index", json={}, timeout=30).json()
    assert sorted(m["name"] for m in index) == ["good-model", "naive-model", "tampered-model"]


def test_good_model_predicts_the_digits_over_rest_and_grpc(stack: Compose) -> None:
    assert stack.load("good-model").status_code == 200
    payload = {"inputs": [{"name": "x", "shape": list(SAMPLE.shape), "datatype": "FP64", "data": SAMPLE.flatten().tolist()}]}
    rest = requests.post(f"{stack.url}/v2/models/good-model/infer", json=payload, timeout=60)
    assert rest.json()["outputs"][0]["data"] == EXPECTED
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP64", shape=list(SAMPLE.shape), contents=pb.InferTensorContents(fp64_contents=SAMPLE.flatten().tolist())
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc}") as channel:
        reply = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="good-model", inputs=[tensor]), timeout=60
        )
    assert list(reply.outputs[0].contents.int64_contents) == EXPECTED


def test_naive_then_tampered_the_walkthrough(stack: Compose) -> None:
    # The plain sklearn runtime runs the pickle inside MLServer: pwnd.txt appears there.
    stack.load("naive-model")
    shown = stack.exec("mlserver", "cat", "pwnd.txt")
    assert shown.returncode == 0 and "HOME=/home/mlserver" in shown.stdout
    stack.exec("mlserver", "rm", "pwnd.txt")
    # Our runtime refuses the same file, naming the failed check; nothing runs anywhere.
    refused = stack.load("tampered-model")
    assert refused.status_code == 403
    assert "digest mismatch" in refused.json()["error"]
    for service, paths in (("mlserver", ["pwnd.txt", "/tmp/pwnd.txt"]), ("loader", ["pwnd.txt", "/pwnd.txt", "/tmp/pwnd.txt", "/run/loader/pwnd.txt"])):
        listing = stack.exec(service, "ls", *paths)
        assert listing.returncode != 0 and listing.stdout == "", f"{service}: {listing.stdout}"
    assert requests.get(f"{stack.url}/v2/health/ready", timeout=5).status_code == 200


@pytest.mark.parametrize("stack", ["default"], indirect=True)
def test_the_loader_has_no_network_and_a_read_only_root(stack: Compose) -> None:
    interfaces = stack.exec("loader", "python", "-c", "print([l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]])")
    assert interfaces.stdout.strip() == "['lo']"
    write = stack.exec("loader", "touch", "/pwnd")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def _fd_kind(link: str) -> str:
    """What a descriptor is (socket, pipe, memfd, anon_inode:..., file), to name what grew."""
    try:
        target = os.readlink(link)
    except OSError:
        return "gone"
    if target.startswith("/memfd:"):
        return "memfd"
    if target.startswith("/"):
        return "file"
    return target.split(":", 1)[0] if not target.startswith("anon_inode") else target.split("[", 1)[0]


def _settled_usage(stack: Compose, service: str, baseline: dict[str, int], window: float) -> tuple[dict[str, int], float]:
    """Usage once it is back at `baseline` (descriptors and processes), or after `window`
    seconds: the loader closes memfds and ends children in the background, and on a busy host
    that lags behind the cycles. What is still above the baseline after the window is a leak."""
    started = time.monotonic()
    while True:
        usage = _container_usage(stack, service)
        waited = time.monotonic() - started
        if (usage["fds"] <= baseline["fds"] and usage["processes"] <= baseline["processes"]) or waited >= window:
            return usage, waited


def _container_usage(stack: Compose, service: str) -> dict[str, int]:
    """File descriptors, resident memory (KiB) and processes of a service's long-lived processes.

    Read from the host. Healthcheck commands come and go every few seconds and a confined child
    may still be exiting, so these are left out and the quietest of a few samples is kept.
    """
    cid = stack.run("ps", "-q", service).stdout.strip()
    samples = []
    for _ in range(5):
        top = subprocess.run(["docker", "top", cid, "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout.splitlines()[1:]
        pids = [int(line.split(None, 1)[0]) for line in top if "health" not in line and "urlopen" not in line]
        usage: dict[str, int] = {"fds": 0, "rss_kib": 0, "processes": 0}
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    usage["fds"] += 1
                    kind = _fd_kind(f"/proc/{pid}/fd/{fd}")
                    usage[f"fd:{kind}"] = usage.get(f"fd:{kind}", 0) + 1
                with open(f"/proc/{pid}/status") as status:
                    usage["rss_kib"] += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
                usage["processes"] += 1
            except (OSError, StopIteration):
                continue  # exited between the listing and the read
        samples.append(usage)
        time.sleep(0.3)
    return min(samples, key=lambda u: (u["processes"], u["fds"]))


# Background closes and child exits lag behind the cycles on a busy host; a leak never settles.
SETTLE_SECONDS = 60.0


@pytest.mark.concurrency
@pytest.mark.parametrize("stack", ["default"], indirect=True)
def test_soak_load_unload_cycles(stack: Compose) -> None:
    """SOAK_CYCLES load/unload cycles (good loads, tampered refusals): no growth in fds, memory, containers."""
    cycles = int(os.environ.get("SOAK_CYCLES", "150"))
    containers = len(stack.containers())

    def cycle() -> None:
        assert stack.load("good-model").status_code == 200
        assert requests.post(f"{stack.url}/v2/repository/models/good-model/unload", timeout=60).status_code == 200
        assert stack.load("tampered-model").status_code == 403

    for _ in range(10):  # warm-up: worker pools, caches, lazy imports
        cycle()
    before = {s: _container_usage(stack, s) for s in ("loader", "mlserver")}
    started = time.monotonic()
    for _ in range(cycles):
        cycle()
    elapsed = time.monotonic() - started
    at_end = {s: _container_usage(stack, s) for s in ("loader", "mlserver")}
    settled = {s: _settled_usage(stack, s, before[s], SETTLE_SECONDS) for s in ("loader", "mlserver")}
    after = {s: usage for s, (usage, _) in settled.items()}
    report = {
        "cycles": cycles,
        "seconds": round(elapsed, 1),
        "before": before,
        "at_end": at_end,
        "after_settle": after,
        "settle_seconds": {s: round(waited, 1) for s, (_, waited) in settled.items()},
    }
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "soak.json").write_text(json.dumps(report, indent=2))
    print(f"soak: {json.dumps(report)}")
    assert len(stack.containers()) == containers
    for service in ("loader", "mlserver"):
        # Exact after the settle window: any descriptor or process still above the baseline is
        # a leak, named by kind in the report.
        assert after[service]["processes"] == before[service]["processes"], report
        assert after[service]["fds"] <= before[service]["fds"], report
        # Bounded, not exact: allocator caches may keep a few MB.
        assert after[service]["rss_kib"] <= before[service]["rss_kib"] + 64 * 1024, report


@pytest.mark.parametrize("stack", ["default"], indirect=True)
def test_down_leaves_nothing_and_up_again_reuses_the_images(stack: Compose) -> None:
    stack.run("down")
    assert stack.containers() == []
    started = time.monotonic()
    stack.run("up", "-d", "--wait", "--wait-timeout", "300")  # a safety net; the time is printed
    print(f"second `up --wait` healthy after {time.monotonic() - started:.1f} s")
    assert stack.load("good-model").status_code == 200


def test_no_private_key_is_readable_in_the_serving_containers(stack: Compose) -> None:
    """The example's authority keeps its keys out of the volume the loader and MLServer mount:
    a signed hostile model (or anything else in those containers) finds no key to sign with."""
    for service in ("loader", "mlserver"):
        scan = stack.exec(service, "python", "-c", KEY_SCAN)
        assert scan.returncode == 0, scan.stderr
        assert "/data" in scan.stderr.split(), f"{service}: the scan did not see the served volume: {scan.stderr}"
        assert scan.stdout.strip() == "", f"{service} can read private keys: {scan.stdout}"


def _namespace(stack: Compose, service: str, kind: str) -> str:
    link = stack.exec(service, "readlink", f"/proc/self/ns/{kind}")
    assert link.returncode == 0, link.stderr
    return link.stdout.strip()


def _writable_volumes(stack: Compose, service: str) -> set[str]:
    cid = stack.run("ps", "-q", service).stdout.strip()
    mounts = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .Mounts}}", cid], capture_output=True, text=True, check=True).stdout)
    return {m.get("Name") or m["Destination"] for m in mounts if m["RW"]}


@pytest.mark.parametrize("stack", ["pod"], indirect=True)
def test_pod_topology_shares_namespaces_and_only_the_socket_volume(stack: Compose) -> None:
    assert _namespace(stack, "loader", "net") == _namespace(stack, "mlserver", "net")
    assert _namespace(stack, "loader", "ipc") == _namespace(stack, "mlserver", "ipc")
    assert _namespace(stack, "loader", "pid") != _namespace(stack, "mlserver", "pid")
    shared = _writable_volumes(stack, "loader") & _writable_volumes(stack, "mlserver")
    assert shared == {f"{stack.project}_loader-socket"}, shared
    write = stack.exec("loader", "touch", "/pwnd")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


@pytest.mark.parametrize("stack", ["gvisor"], indirect=True)
def test_gvisor_topology_runs_the_loader_under_runsc_and_says_so(stack: Compose) -> None:
    """compose.gvisor.yaml: the loader's container runs on runsc (MLServer on runc), and the
    loader's health details name gVisor, its seccomp and the missing Landlock."""
    runtimes = {}
    for service in ("loader", "mlserver"):
        cid = stack.run("ps", "-q", service).stdout.strip()
        runtimes[service] = subprocess.run(["docker", "inspect", "--format", "{{.HostConfig.Runtime}}", cid], capture_output=True, text=True, check=True).stdout.strip()
    assert runtimes == {"loader": "runsc", "mlserver": "runc"}
    details = stack.exec("loader", "python", "-m", "loader", "health", "--details", "--endpoint", "unix:///run/loader/loader.sock")
    assert details.returncode == 0, details.stderr
    for line in ("kernel: gVisor", "landlock under gVisor: not implemented", "a chroot into /sandbox", "(applied inside gVisor)", "in force on the loader (inside gVisor"):
        assert line in details.stdout, details.stdout
