"""Integration fixtures: a loader process over real gRPC, and helpers to call it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from tests.conftest import SIGNER, Authority, LoaderProcess, start_loader, stop_process


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority, other_authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("loader"),
        models_root,
        {"local": authority.trust_config, "other": other_authority.trust_config},
        "--child-wall-seconds=6", "--child-cpu-seconds=3", "--child-memory-mb=256", "--max-concurrent-loads=2",
    )
    yield proc
    stop_process(proc.process)


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
        responses = loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=60)
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


