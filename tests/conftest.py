"""Shared fixtures: a running local authority that signs in process, a loader, Docker gating.

Tiers come from the folder a test lives in: tests/unit, tests/integration, tests/container,
tests/e2e (markers of the same names).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import joblib
import pytest
from sigstore.models import ClientTrustConfig
from sigstore.oidc import IdentityToken
from sigstore.sign import SigningContext

from authority.oidc import mint_token
from authority.server import AuthorityServer
from authority.state import AuthorityState, init_authority

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SIGNER = "model-pipeline@example.com"
TIERS = ("unit", "integration", "container", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


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


def _start_authority(directory: Path) -> Authority:
    state = init_authority(directory)
    server = AuthorityServer(state)
    server.start_background()
    return Authority(state, server)


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    auth = _start_authority(tmp_path_factory.mktemp("authority"))
    yield auth
    auth.server.shutdown()


@pytest.fixture(scope="session")
def other_authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    """A second, unrelated authority: its bundles must not verify under the first's root."""
    auth = _start_authority(tmp_path_factory.mktemp("other-authority"))
    yield auth
    auth.server.shutdown()


@pytest.fixture(scope="session")
def digits_svm_bytes() -> bytes:
    sys.path.insert(0, str(ROOT / "examples"))
    from digits_walkthrough.build import train_digits_svm

    buffer = io.BytesIO()
    joblib.dump(train_digits_svm(), buffer)
    return buffer.getvalue()


def docker_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_required() -> None:
    """Container and e2e tests fail (not skip) without Docker when CI=true."""
    if docker_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Docker is required for this tier and CI=true: run scripts/setup.sh first")
    pytest.skip("Docker is not available (run scripts/setup.sh); CI=true turns this into a failure")


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


def start_mlserver(repo: Path, cwd: Path, log: Path, env: dict[str, str], timeout: float = 90.0) -> subprocess.Popen:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """One line per tier, so a run shows that the container and e2e tiers executed."""
    counts: dict[str, dict[str, int]] = {tier: {} for tier in TIERS}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            parts = Path(str(report.fspath)).parts if hasattr(report, "fspath") else ()
            tier = next((t for t in TIERS if t in parts), None)
            if tier and getattr(report, "when", "call") in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                counts[tier][outcome] = counts[tier].get(outcome, 0) + 1
    terminalreporter.write_sep("-", "tiers")
    for tier, by_outcome in counts.items():
        summary = ", ".join(f"{n} {o}" for o, n in sorted(by_outcome.items())) or "nothing ran"
        terminalreporter.write_line(f"{tier:12s} {summary}")
