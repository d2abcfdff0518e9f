"""Helpers shared by the tests and the benchmark: the local authority, loader and MLServer
processes, Docker detection, and calls to a running loader. Fixtures live in conftest.py."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import joblib
import pytest
import requests
import yaml
from sigstore.models import ClientTrustConfig
from sigstore.oidc import IdentityToken
from sigstore.sign import SigningContext

from authority.oidc import mint_token
from authority.server import AuthorityServer
from authority.state import AuthorityState, init_authority
from loader.proto.v1 import loader_pb2, loader_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SIGNER = "model-pipeline@example.com"
TIERS = ("unit", "integration", "container", "e2e")


@dataclass
class Authority:
    """A local Sigstore authority served on loopback, with in-process signing."""

    state: AuthorityState
    server: AuthorityServer

    @property
    def issuer(self) -> str:
        return self.state.issuer

    @property
    def trust_config(self) -> Path:
        return self.state.directory / "trust_config.json"

    def token(self, email: str = SIGNER) -> str:
        return mint_token(self.state, email)

    def sign_bytes(self, data: bytes, email: str = SIGNER) -> bytes:
        """A Sigstore bundle (JSON bytes) for `data`, made by sigstore-python's signer."""
        config = ClientTrustConfig.from_json(self.trust_config.read_text())
        context = SigningContext.from_trust_config(config)
        with context.signer(IdentityToken(self.token(email))) as signer:
            return signer.sign_artifact(data).to_json().encode()

    def sign_file(self, path: Path, email: str = SIGNER) -> Path:
        bundle = path.with_name(path.name + ".sigstore.json")
        bundle.write_bytes(self.sign_bytes(path.read_bytes(), email))
        return bundle


def start_authority(directory: Path, rekor_version: int = 1, timestamps: bool = True) -> Authority:
    state = init_authority(directory, rekor_version=rekor_version, timestamps=timestamps)
    server = AuthorityServer(state)
    server.start_background()
    return Authority(state, server)


def docker_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (`!override`, `!reset`) read as the plain value they tag."""


def _untagged(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!override", "!reset"):
    _ComposeLoader.add_constructor(_tag, _untagged)

# compose.gvisor.yaml's loader service: its runtime and the options gVisor needs (one place).
GVISOR_LOADER: dict = yaml.load((ROOT / "compose.gvisor.yaml").read_text(), Loader=_ComposeLoader)["services"]["loader"]  # noqa: S506 - a safe loader


def runsc_available() -> bool:
    """True if the Docker daemon has compose.gvisor.yaml's runtime (scripts/setup.sh registers it)."""
    try:
        out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and f'"{GVISOR_LOADER["runtime"]}"' in out.stdout


def require_runsc() -> None:
    """gVisor cases fail (not skip) without the runsc runtime when CI=true, as Docker's do."""
    if runsc_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("the runsc runtime is required for the gVisor cases and CI=true: run scripts/setup.sh first")
    pytest.skip("the runsc runtime is not registered with Docker (run scripts/setup.sh); CI=true turns this into a failure")


@dataclass
class LoaderProcess:
    socket: Path
    models_root: Path
    process: subprocess.Popen
    log: Path

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for_health(endpoint: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before becoming healthy")
        try:
            with grpc.insecure_channel(endpoint) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{endpoint} not healthy within {timeout} s")


def start_loader(
    workdir: Path, models_root: Path, trust: dict[str, Path], *extra: str, sock: Path | None = None
) -> LoaderProcess:
    sock = sock or workdir / "loader.sock"
    log = workdir / "loader.log"
    args = [PYTHON, "-m", "loader", "serve", f"--socket={sock}", f"--models-root={models_root}"]
    args += [f"--trust-config={name}={path}" for name, path in trust.items()]
    args += ["--default-trust=local", *extra]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    wait_for_health(f"unix://{sock}", process=proc)
    return LoaderProcess(sock, models_root, proc, log)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_mlserver(repo: Path, cwd: Path, log: Path, env: dict[str, str], timeout: float = 300.0) -> subprocess.Popen:
    """`mlserver start REPO` in `cwd`; returns once /v2/health/ready answers 200."""
    import requests

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(PYTHON).with_name("mlserver")), "start", str(repo)], cwd=cwd, env={**os.environ, **env},
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{env['MLSERVER_HTTP_PORT']}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"MLServer exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    stop_process(proc)
    raise TimeoutError(f"MLServer did not become ready within {timeout} s: {log.read_text()[-3000:]}")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before in this process: the kernel may give
    a just-closed port again, and one server's HTTP, gRPC and metrics ports must differ."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port



@contextmanager
def memfd_file(data: bytes) -> Iterator[io.BufferedReader]:
    """`data` in a memfd opened for reading, as the runtime opens the model the loader passed."""
    fd = os.memfd_create("model")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        with open(f"/proc/self/fd/{fd}", "rb") as file:
            yield file
    finally:
        os.close(fd)


def digits_svm_dump() -> bytes:
    """The walkthrough's digits SVM, saved with joblib."""
    sys.path.insert(0, str(ROOT / "examples"))
    from digits_walkthrough.build import train_digits_svm

    buffer = io.BytesIO()
    joblib.dump(train_digits_svm(), buffer)
    return buffer.getvalue()


def put(models_root: Path, name: str, data: bytes, authority: Authority | None = None, email: str = SIGNER) -> str:
    path = models_root / name / "model.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if authority is not None:
        authority.sign_file(path, email)
    return f"{name}/model.joblib"


def call(loader: LoaderProcess, artefact: str, authority: Authority, identity: str = SIGNER, issuer: str | None = None, **fields: str) -> tuple[loader_pb2.LoadedModel, bytes]:
    request = loader_pb2.VerifyAndLoadRequest(
        artefact=artefact,
        signers=[loader_pb2.Signer(identity=identity, issuer=issuer or authority.issuer)],
        model_name=artefact,
        **fields,
    )
    with grpc.insecure_channel(loader.endpoint) as channel:
        # A safety net only: the loader's own limits end hostile loads, and a large honest one on
        # a busy host may take minutes.
        responses = loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=300)
        header = next(responses).header
        return header, b"".join(r.chunk for r in responses)


def refused(loader: LoaderProcess, artefact: str, authority: Authority, **kwargs: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        call(loader, artefact, authority, **kwargs)
    return exc.value


def log_records(loader: LoaderProcess, artefact: str) -> list[dict]:
    records = []
    for line in loader.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("artefact") == artefact:
                records.append(record)
    return records


# --- the compose stack ------------------------------------------------------------------------

# "default": compose.yaml, the loader with no network at all. "pod": plus compose.pod.yaml, the
# Kubernetes pod topology (one network and IPC namespace for the loader and MLServer; the socket
# volume is the only place both can write). "gvisor": plus compose.gvisor.yaml, the loader under
# gVisor's runsc runtime (scripts/setup.sh registers it).
COMPOSE_FILES = {
    "default": ("compose.yaml",),
    "pod": ("compose.yaml", "compose.pod.yaml"),
    "gvisor": ("compose.yaml", "compose.gvisor.yaml"),
}

# Images and compose projects carry a tag, so two checkouts (a CI clone, a branch) can build and
# run their stacks side by side on one daemon: MLSERVER_SIGSTORE_TAG=mybranch scripts/setup.sh.
IMAGE_TAG = os.environ.get("MLSERVER_SIGSTORE_TAG", "dev")
LOADER_IMAGE = os.environ.get("MLSERVER_SIGSTORE_TEST_LOADER_IMAGE", f"mlserver-sigstore/loader:{IMAGE_TAG}")
MLSERVER_IMAGE = f"mlserver-sigstore/mlserver:{IMAGE_TAG}"


def project_name(name: str) -> str:
    """A compose project name of this checkout's tag (the `dev` tag keeps the plain name)."""
    return name if IMAGE_TAG == "dev" else f"{name}-{IMAGE_TAG}"


class ComposeError(RuntimeError):
    """The stack did not come up healthy; the message carries the end of its logs."""


@dataclass
class ComposeStack:
    """A running compose stack of this project, on loopback ports of its own."""

    topology: str
    project: str
    env: dict[str, str]
    http: int
    grpc: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        files = [arg for name in COMPOSE_FILES[self.topology] for arg in ("-f", name)]
        return subprocess.run(
            ["docker", "compose", *files, "-p", self.project, *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, check=check, timeout=timeout,
        )

    def exec(self, service: str, *command: str) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", service, *command, check=False)

    def load(self, name: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{name}/load", timeout=120)

    def containers(self) -> list[str]:
        out = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True, text=True, check=True,
        )
        return out.stdout.split()


@contextmanager
def compose_stack(topology: str = "default", project: str | None = None) -> Iterator[ComposeStack]:
    """`docker compose up -d --wait` of the whole stack (example, loader, MLServer); `down -v` after.

    The pod topology from a shell, as this runs it (ports default to 8080-8082):
        docker compose -f compose.yaml -f compose.pod.yaml -p PROJECT up -d --wait
    Images come from `scripts/setup.sh`. Raises ComposeError with the logs if it does not come up.
    """
    if topology not in COMPOSE_FILES:
        raise ValueError(f"unknown topology {topology!r}: choose one of {sorted(COMPOSE_FILES)}")
    if topology == "gvisor":
        require_runsc()
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(grpc_port), "MLSERVER_METRICS_PORT": str(metrics)}
    stack = ComposeStack(topology, project_name(project or f"mlserver-sigstore-{topology}"), env, http, grpc_port)
    stack.run("down", "-v", "--remove-orphans", check=False)
    try:
        up = stack.run("up", "-d", "--wait", "--wait-timeout", "180", check=False)
        if up.returncode != 0:
            logs = stack.run("logs", "--tail", "50", check=False).stdout
            raise ComposeError(f"docker compose up ({topology}) failed: {up.stderr}\n{logs}")
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)
