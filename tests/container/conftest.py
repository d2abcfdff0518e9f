"""Fixtures for the container tier: a hardened loader container built from docker/Dockerfile."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from docker.types import Mount
from mlserver.settings import ModelParameters, ModelSettings

import docker
from runtime import SigstoreModel
from runtime.docker_sandbox import hardened_loader_options
from tests.controls import Outcome, Target, Technique, control_argv, control_outcome
from tests.support import GVISOR_LOADER, LOADER_IMAGE, ROOT, SIGNER, Authority, require_runsc, wait_for_health

CANARY = "canary-5e1f0a"  # set on the loader container; no payload may read it
# The loader container's runtimes: Docker's default (runc) and gVisor (compose.gvisor.yaml's).
# A module runs under both with `pytestmark = pytest.mark.parametrize("loader_container", RUNTIMES, indirect=True)`.
RUNTIMES = ["runc", "runsc"]


@pytest.fixture(scope="session")
def docker_client(docker_required: None) -> docker.DockerClient:
    client = docker.from_env()
    try:
        client.images.get(LOADER_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{LOADER_IMAGE} is missing: run scripts/setup.sh (it builds the images)")
    # The runtime's docker mode (and MLServer processes started here) use this checkout's image.
    os.environ.setdefault("MLSERVER_SIGSTORE_DOCKER_IMAGE", LOADER_IMAGE)
    return client


@dataclass
class LoaderContainer:
    container: docker.models.containers.Container
    models: Path
    socket_dir: Path
    runtime: str = "runc"

    @property
    def gvisor(self) -> bool:
        return self.runtime == "runsc"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_dir}/loader.sock"

    def put(self, name: str, data: bytes, authority: Authority) -> str:
        """Write and sign `name/model.joblib` (readable by the container's user); return its relative path."""
        folder = self.models / name
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
        (folder / "model.joblib").write_bytes(data)
        authority.sign_file(folder / "model.joblib")
        for f in folder.iterdir():
            f.chmod(0o644)
        return f"{name}/model.joblib"

    def model(self, name: str, data: bytes, authority: Authority, execution: str = "auto") -> SigstoreModel:
        """A SigstoreModel for a freshly signed artefact, loading through this container.

        The container sees the models folder elsewhere, so set MLSERVER_SIGSTORE_ARTEFACTS_ROOT
        to `self.models`: the runtime then sends paths relative to it.
        """
        path = self.models / self.put(name, data, authority)
        policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": self.endpoint, "execution": execution}
        parameters = ModelParameters(uri=str(path), extra={"sigstore": policy})
        return SigstoreModel(ModelSettings(name=name, implementation=SigstoreModel, parameters=parameters))

    def exec_python(self, code: str) -> tuple[int, str]:
        result = self.container.exec_run(["python", "-c", code])
        return result.exit_code, result.output.decode(errors="replace")


@contextmanager
def running_loader(
    docker_client: docker.DockerClient, authority: Authority, *extra: str, environment: dict[str, str] | None = None, runtime: str = "runc",
    mounts: tuple[Mount, ...] = (),
) -> Iterator[LoaderContainer]:
    """A loader container hardened as in compose.yaml, with its models and socket on the host
    (and `environment` added to the container's); with runtime "runsc", under gVisor as
    compose.gvisor.yaml runs it."""
    options = hardened_loader_options()
    if runtime == "runsc":
        require_runsc()
        # compose.gvisor.yaml's changes; compose passes the profile's path, the Docker API the profile.
        options.update(GVISOR_LOADER)
        options["security_opt"] = [
            f"seccomp={(ROOT / opt.partition('=')[2]).read_text()}" if opt.startswith("seccomp=") else opt
            for opt in GVISOR_LOADER["security_opt"]
        ]
    work = Path(tempfile.mkdtemp(prefix="loader-container-"))
    models, socket_dir = work / "models", work / "socket"
    models.mkdir()
    socket_dir.mkdir()
    os.chmod(work, 0o755)
    os.chmod(models, 0o755)
    os.chmod(socket_dir, 0o777)
    shutil.copy(authority.trust_config, work / "trust_config.json")
    os.chmod(work / "trust_config.json", 0o644)
    container = docker_client.containers.run(
        LOADER_IMAGE,
        command=["serve", "--socket=/run/loader/loader.sock", "--models-root=/models",
                 "--trust-config=local=/trust/trust_config.json", "--default-trust=local",
                 "--child-wall-seconds=8", "--child-cpu-seconds=4", "--child-memory-mb=256", *extra],
        detach=True,
        mounts=[
            Mount("/models", str(models), type="bind", read_only=True),
            Mount("/trust/trust_config.json", str(work / "trust_config.json"), type="bind", read_only=True),
            Mount("/run/loader", str(socket_dir), type="bind"),
            *mounts,
        ],
        labels={"mlserver-sigstore.role": "test-loader"},
        environment={"CANARY_SECRET": CANARY, **(environment or {})},
        # The product's own hardening (the runtime's docker mode uses the same options).
        **options,
    )
    try:
        wait_for_health(f"unix://{socket_dir}/loader.sock", timeout=90)
        yield LoaderContainer(container, models, socket_dir, runtime)
    finally:
        container.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def loader_container(request: pytest.FixtureRequest, docker_client: docker.DockerClient, authority: Authority) -> Iterator[LoaderContainer]:
    """The hardened loader container; under runc unless parametrized with RUNTIMES."""
    with running_loader(docker_client, authority, runtime=getattr(request, "param", "runc")) as loader:
        yield loader


@dataclass
class ControlContainer:
    """A plain container of the loader image for positive controls: root, Docker's default
    capabilities, no seccomp profile, a writable root, the host's loopback network. Its /models is
    the loader container's models folder; its /run/loader is `scratch`, a host folder."""

    container: docker.models.containers.Container
    scratch: Path

    def unpickle(self, path: str, technique: Technique, target: Target) -> Outcome:
        """Unpickle `path` (as the container sees it) with no sandbox; report what happened."""
        argv = control_argv(path, technique, target, kill_after=technique.control_seconds)
        # A killed control prints no report line: that is how a still-running payload shows.
        result = self.container.exec_run(argv, environment={"OPENBLAS_NUM_THREADS": "1"})
        return control_outcome(result.output, timed_out=b"CONTROL " not in result.output)


@pytest.fixture(scope="module")
def control_container(docker_client: docker.DockerClient, loader_container: LoaderContainer) -> Iterator[ControlContainer]:
    scratch = Path(tempfile.mkdtemp(prefix="control-"))
    os.chmod(scratch, 0o777)
    container = docker_client.containers.run(
        LOADER_IMAGE, entrypoint=["sleep", "infinity"], detach=True, user="root", network_mode="host",
        security_opt=["seccomp=unconfined"], pids_limit=256, mem_limit="2g",
        mounts=[Mount("/models", str(loader_container.models), type="bind"), Mount("/run/loader", str(scratch), type="bind")],
        labels={"mlserver-sigstore.role": "test-control"}, environment={"CANARY_SECRET": CANARY},
    )
    try:
        yield ControlContainer(container, scratch)
    finally:
        container.remove(force=True)
        shutil.rmtree(scratch, ignore_errors=True)
