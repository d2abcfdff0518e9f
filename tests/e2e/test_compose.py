"""The compose stack end to end: the walkthrough over REST and gRPC, hardening, down and up."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import requests
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from sklearn import datasets

from tests.support import ROOT, free_port

PROJECT = "mlserver-sigstore-e2e"
DIGITS = datasets.load_digits()
SAMPLE = DIGITS.images.reshape((len(DIGITS.images), -1))[-6:]
EXPECTED = DIGITS.target[-6:].tolist()


@dataclass
class Compose:
    env: dict[str, str]
    http: int
    grpc: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "compose", "-p", PROJECT, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", service, *command, check=False)

    def load(self, name: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{name}/load", timeout=120)

    def containers(self) -> list[str]:
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], capture_output=True, text=True, check=True)
        return out.stdout.split()


@pytest.fixture(scope="module")
def stack(docker_required: None) -> Iterator[Compose]:
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(grpc_port), "MLSERVER_METRICS_PORT": str(metrics)}
    compose = Compose(env, http, grpc_port)
    compose.run("down", "-v", "--remove-orphans", check=False)
    up = compose.run("up", "-d", "--wait", "--wait-timeout", "180", check=False)
    if up.returncode != 0:
        logs = compose.run("logs", "--tail", "50", check=False).stdout
        compose.run("down", "-v", check=False)
        pytest.fail(f"docker compose up failed: {up.stderr}\n{logs}")
    yield compose
    compose.run("down", "-v", "--remove-orphans", check=False)


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


def test_the_loader_has_no_network_and_a_read_only_root(stack: Compose) -> None:
    interfaces = stack.exec("loader", "python", "-c", "print([l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]])")
    assert interfaces.stdout.strip() == "['lo']"
    write = stack.exec("loader", "touch", "/pwnd")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


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
        usage = {"fds": 0, "rss_kib": 0, "processes": 0}
        for pid in pids:
            try:
                usage["fds"] += len(os.listdir(f"/proc/{pid}/fd"))
                with open(f"/proc/{pid}/status") as status:
                    usage["rss_kib"] += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
                usage["processes"] += 1
            except (OSError, StopIteration):
                continue  # exited between the listing and the read
        samples.append(usage)
        time.sleep(0.3)
    return min(samples, key=lambda u: (u["processes"], u["fds"]))


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
    after = {s: _container_usage(stack, s) for s in ("loader", "mlserver")}
    report = {"cycles": cycles, "seconds": round(elapsed, 1), "before": before, "after": after}
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "soak.json").write_text(json.dumps(report, indent=2))
    print(f"soak: {json.dumps(report)}")
    assert len(stack.containers()) == containers
    for service in ("loader", "mlserver"):
        assert after[service]["processes"] == before[service]["processes"], report
        assert after[service]["fds"] <= before[service]["fds"] + 8, report
        # Bounded, not exact: allocator caches may keep a few MB.
        assert after[service]["rss_kib"] <= before[service]["rss_kib"] + 64 * 1024, report


def test_down_leaves_nothing_and_up_again_reuses_the_images(stack: Compose) -> None:
    stack.run("down")
    assert stack.containers() == []
    started = time.monotonic()
    stack.run("up", "-d", "--wait", "--wait-timeout", "60")
    print(f"second `up --wait` healthy after {time.monotonic() - started:.1f} s")
    assert stack.load("good-model").status_code == 200
