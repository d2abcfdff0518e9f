"""The walkthrough against a real `mlserver start`, with the loader as a host process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sklearn import datasets

from tests.support import ROOT, LoaderProcess, free_port, start_loader, start_mlserver, stop_process

DIGITS = datasets.load_digits()
SAMPLE = DIGITS.images.reshape((len(DIGITS.images), -1))[-8:]


@dataclass
class Stack:
    repo: Path
    cwd: Path
    url: str
    loader: LoaderProcess
    mlserver: subprocess.Popen
    log: Path

    def load(self, name: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{name}/load", timeout=120)

    def infer(self, name: str) -> requests.Response:
        payload = {"inputs": [{"name": "x", "shape": list(SAMPLE.shape), "datatype": "FP64", "data": SAMPLE.flatten().tolist()}]}
        return requests.post(f"{self.url}/v2/models/{name}/infer", json=payload, timeout=60)


def build_repository(root: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    from digits_walkthrough.build import build

    # The authority's private keys live beside the served folder, never inside it.
    build(root, root.with_name(root.name + "-authority"))


@pytest.fixture(scope="module", params=[1, 0], ids=["parallel-workers-1", "parallel-workers-0"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("walkthrough")
    build_repository(root)
    # A model whose policy is missing: refused with the field to fill in.
    (root / "repo" / "no-policy-model").mkdir()
    (root / "repo" / "no-policy-model" / "model-settings.json").write_text(
        json.dumps({"name": "no-policy-model", "implementation": "runtime.SigstoreModel", "parameters": {"uri": str(root / "artefacts" / "good-model" / "model.joblib")}})
    )
    # A model folder with Python beside its settings: MLServer would import it; we refuse.
    (root / "repo" / "code-beside-model").mkdir()
    (root / "repo" / "code-beside-model" / "model-settings.json").write_text(
        (root / "repo" / "good-model" / "model-settings.json").read_text().replace('"good-model"', '"code-beside-model"')
    )
    (root / "repo" / "code-beside-model" / "helpers.py").write_text("X = 1\n")
    loader = start_loader(tmp_path_factory.mktemp("loader"), root / "artefacts", {"local": root / "trust" / "trust_config.json"})
    cwd = tmp_path_factory.mktemp("mlserver-cwd")
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {
        "MLSERVER_SIGSTORE_ENDPOINT": loader.endpoint,
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_PORT": str(metrics),
        "MLSERVER_PARALLEL_WORKERS": str(request.param),
    }
    log = cwd.parent / f"mlserver-{request.param}.log"
    proc = start_mlserver(root / "repo", cwd, log, env)
    url = f"http://127.0.0.1:{http}"
    yield Stack(root / "repo", cwd, url, loader, proc, log)
    stop_process(proc)
    stop_process(loader.process)


def test_the_index_lists_the_three_walkthrough_models(stack: Stack) -> None:
    index = requests.post(f"{stack.url}/v2/repository/index", json={}, timeout=30).json()
    assert {m["name"] for m in index} >= {"good-model", "naive-model", "tampered-model"}


def test_good_model_loads_and_predicts_the_digits(stack: Stack) -> None:
    assert stack.load("good-model").status_code == 200
    response = stack.infer("good-model")
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == DIGITS.target[-8:].tolist()


def test_tampered_model_is_refused_naming_the_check_and_leaves_no_trace(stack: Stack) -> None:
    response = stack.load("tampered-model")
    assert response.status_code == 403
    assert "digest mismatch" in response.json()["error"]
    assert not (stack.cwd / "pwnd.txt").exists()
    assert requests.get(f"{stack.url}/v2/health/ready", timeout=5).status_code == 200
    assert stack.infer("good-model").status_code == 200


def test_a_missing_policy_is_refused_naming_the_field(stack: Stack) -> None:
    response = stack.load("no-policy-model")
    assert response.status_code == 400
    assert "parameters.extra.sigstore.signers" in response.json()["error"]


def test_python_beside_the_settings_refuses_the_load(stack: Stack) -> None:
    response = stack.load("code-beside-model")
    assert response.status_code == 403
    assert "helpers.py" in response.json()["error"] and "model-settings folder" in response.json()["error"]


def test_naive_model_shows_the_danger(stack: Stack) -> None:
    # The plain sklearn runtime unpickles the tampered file in the serving process.
    stack.load("naive-model")
    assert (stack.cwd / "pwnd.txt").exists()
    assert "PATH=" in (stack.cwd / "pwnd.txt").read_text()
    (stack.cwd / "pwnd.txt").unlink()


def test_loader_restart_while_mlserver_runs(stack: Stack, tmp_path: Path) -> None:
    stop_process(stack.loader.process)
    response = stack.load("good-model")
    assert response.status_code == 503
    assert "UNAVAILABLE" in response.json()["error"]
    # Same socket path as before: MLServer reconnects without a restart.
    restarted = start_loader(
        tmp_path, stack.repo.parent / "artefacts", {"local": stack.repo.parent / "trust" / "trust_config.json"}, sock=stack.loader.socket
    )
    try:
        assert stack.load("good-model").status_code == 200
        assert stack.infer("good-model").status_code == 200
    finally:
        stack.loader.process = restarted.process
