"""runtime.SigstoreModel in `docker` mode: one ephemeral hardened loader container per load."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import joblib
import pytest
from mlserver.settings import ModelParameters, ModelSettings
from sklearn import datasets

import docker
from runtime import SigstoreModel
from runtime.errors import ModelRefused
from tests import hostile
from tests.support import SIGNER, Authority

DIGITS = datasets.load_digits()
X = DIGITS.images.reshape((len(DIGITS.images), -1))
LABEL = {"label": "mlserver-sigstore.role=ephemeral-loader"}


@pytest.fixture()
def docker_mode(monkeypatch: pytest.MonkeyPatch, authority: Authority, docker_client: docker.DockerClient) -> None:
    monkeypatch.setenv("MLSERVER_SIGSTORE_SANDBOX", "docker")
    monkeypatch.setenv("MLSERVER_SIGSTORE_DOCKER_TRUST_CONFIGS", f"local={authority.trust_config}")


def _ephemeral(client: docker.DockerClient) -> set[str]:
    return {c.id for c in client.containers.list(all=True, filters=LABEL)}


def _model(path: Path, authority: Authority) -> SigstoreModel:
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "trust_root": "local"}
    return SigstoreModel(ModelSettings(name=path.parent.name, implementation=SigstoreModel, parameters=ModelParameters(uri=str(path), extra={"sigstore": policy})))


def test_docker_mode_loads_a_signed_model_and_leaves_no_container(docker_mode: None, docker_client: docker.DockerClient, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    before = _ephemeral(docker_client)  # others' containers on a shared daemon are not ours
    path = tmp_path / "good" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(digits_svm_bytes)
    authority.sign_file(path)
    model = _model(path, authority)
    assert asyncio.run(model.load())
    original = joblib.load(io.BytesIO(digits_svm_bytes))
    assert (model._model.predict(X) == original.predict(X)).all()
    assert model.verification.identity == SIGNER
    assert _ephemeral(docker_client) <= before, "an ephemeral loader container was left behind"


def test_docker_mode_refuses_a_tampered_model(docker_mode: None, docker_client: docker.DockerClient, authority: Authority, tmp_path: Path) -> None:
    before = _ephemeral(docker_client)  # others' containers on a shared daemon are not ours
    path = tmp_path / "tampered" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(hostile.TRACE)
    authority.sign_file(path)
    path.write_bytes(hostile.os_system(f"touch {tmp_path}/pwnd.txt"))
    with pytest.raises(ModelRefused, match="digest mismatch") as exc:
        asyncio.run(_model(path, authority).load())
    assert exc.value.status_code == 403
    assert not (tmp_path / "pwnd.txt").exists()
    assert _ephemeral(docker_client) <= before, "an ephemeral loader container was left behind"


def test_docker_mode_without_a_daemon_is_a_clear_503(docker_mode: None, monkeypatch: pytest.MonkeyPatch, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    path = tmp_path / "good" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(digits_svm_bytes)
    authority.sign_file(path)
    with pytest.raises(ModelRefused, match="Docker daemon is unreachable") as exc:
        asyncio.run(_model(path, authority).load())
    assert exc.value.status_code == 503


def test_docker_mode_finds_a_dot_sigstore_bundle(docker_mode: None, docker_client: docker.DockerClient, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    """The loader's one bundle rule: `<artefact>.sigstore` (sigstore 1.x) is found too (issue 16, bug 2)."""
    before = _ephemeral(docker_client)  # others' containers on a shared daemon are not ours
    path = tmp_path / "legacy" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(digits_svm_bytes)
    bundle = authority.sign_file(path)
    bundle.rename(path.with_name("model.joblib.sigstore"))
    model = _model(path, authority)
    assert asyncio.run(model.load())
    assert model.verification.identity == SIGNER
    assert _ephemeral(docker_client) <= before, "an ephemeral loader container was left behind"


def test_docker_mode_never_calls_docker_on_the_event_loop(docker_mode: None, docker_client: docker.DockerClient, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLServer's event loop serves every other model while one loads in docker mode: each call to
    the Docker API (start, health, logs, stop) is made from a worker thread, never the loop's own.
    Recorded per call, so no verdict depends on latency or load (how long a blocked loop stalls
    requests is the bench's business)."""
    import requests

    before = _ephemeral(docker_client)
    on_loop: list[str] = []
    calls: list[str] = []
    send = requests.Session.send

    def recorded(session: requests.Session, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        calls.append(f"{request.method} {request.path_url}")
        try:
            asyncio.get_running_loop()
            on_loop.append(calls[-1])
        except RuntimeError:
            pass  # no loop in this thread: a worker thread
        return send(session, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", recorded)
    path = tmp_path / "loop" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(digits_svm_bytes)
    authority.sign_file(path)
    model = _model(path, authority)
    assert asyncio.run(model.load())
    asyncio.run(model.unload())
    assert any("/containers/create" in call for call in calls), calls  # the recorder saw the Docker API
    assert not on_loop, f"Docker API calls made on the event loop: {on_loop}"
    assert _ephemeral(docker_client) <= before, "an ephemeral loader container was left behind"
