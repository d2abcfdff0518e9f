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
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import hostile, support
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

    def add_model(self, name: str, data: bytes) -> None:
        """Sign `data` and put it into the stack as model `name` (artefact, bundle, model settings)."""
        work = Path(tempfile.mkdtemp(prefix="hostile-model-"))
        try:
            (work / "model.joblib").write_bytes(data)
            self.authority.sign_file(work / "model.joblib")
            policy = {"signers": [{"identity": SIGNER, "issuer": self.authority.issuer}], "trust_root": "local"}
            settings = {"name": name, "implementation": "runtime.SigstoreModel",
                        "parameters": {"uri": f"/data/artefacts/{name}/model.joblib", "extra": {"sigstore": policy}}}
            (work / "model-settings.json").write_text(json.dumps(settings))
            work.chmod(0o755)
            for f in work.iterdir():
                f.chmod(0o644)
            self.helper(
                f"mkdir -p /data/artefacts/{name} /data/repo/{name} && cp /in/model.joblib /in/model.joblib.sigstore.json "
                f"/data/artefacts/{name}/ && cp /in/model-settings.json /data/repo/{name}/ && chmod -R a+rX /data/artefacts /data/repo",
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
