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


def _model(path: Path, authority: Authority) -> SigstoreModel:
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "trust_root": "local"}
    return SigstoreModel(ModelSettings(name=path.parent.name, implementation=SigstoreModel, parameters=ModelParameters(uri=str(path), extra={"sigstore": policy})))


def test_docker_mode_loads_a_signed_model_and_leaves_no_container(docker_mode: None, docker_client: docker.DockerClient, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "good" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(digits_svm_bytes)
    authority.sign_file(path)
    model = _model(path, authority)
    assert asyncio.run(model.load())
    original = joblib.load(io.BytesIO(digits_svm_bytes))
    assert (model._model.predict(X) == original.predict(X)).all()
    assert model.verification.identity == SIGNER
    assert docker_client.containers.list(all=True, filters=LABEL) == []


def test_docker_mode_refuses_a_tampered_model(docker_mode: None, docker_client: docker.DockerClient, authority: Authority, tmp_path: Path) -> None:
    path = tmp_path / "tampered" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(hostile.TRACE)
    authority.sign_file(path)
    path.write_bytes(hostile.os_system(f"touch {tmp_path}/pwnd.txt"))
    with pytest.raises(ModelRefused, match="digest mismatch") as exc:
        asyncio.run(_model(path, authority).load())
    assert exc.value.status_code == 403
    assert not (tmp_path / "pwnd.txt").exists()
    assert docker_client.containers.list(all=True, filters=LABEL) == []


def test_docker_mode_without_a_daemon_is_a_clear_503(docker_mode: None, monkeypatch: pytest.MonkeyPatch, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    path = tmp_path / "good" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(digits_svm_bytes)
    authority.sign_file(path)
    with pytest.raises(ModelRefused, match="Docker daemon is unreachable") as exc:
        asyncio.run(_model(path, authority).load())
    assert exc.value.status_code == 503
