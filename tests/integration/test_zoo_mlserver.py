"""A representative subset of the model zoo (tests/model_zoo.py) served by a real `mlserver start`
with runtime.SigstoreModel under the default policy, over REST and over MLServer's gRPC v2
endpoint (its own generated stubs and converters): every answer identical to the same joblib file
under MLServer's SKLearnModel. The subset covers both paths (handed back to the server, served
in the sandbox), NumPy, DataFrame and text inputs, `predict_proba` as a requested output and
through the model's `predict_fn`, a user-defined class (never importable by MLServer) and the
boosters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
import requests
from mlserver.codecs import NumpyCodec
from mlserver.grpc import dataplane_pb2_grpc
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, Parameters, ResponseOutput
from mlserver_sklearn import SKLearnModel

from tests.integration.test_zoo import request_for
from tests.model_zoo import USER_CODE, ZooModel, write, zoo
from tests.support import SIGNER, Authority, LoaderProcess, free_port, start_loader, start_mlserver, stop_process

# name in the zoo: the path "auto" must take.
SUBSET = {
    "logistic-regression": "server",  # NumPy tensor
    "customers-frame-pipeline": "server",  # DataFrame with gaps, categories, free text
    "count-vectorizer-logistic": "server",  # text
    "user-classifier": "sandbox",  # a user-defined class, from the loader's --user-code only
    "tfidf-one-vs-rest": "sandbox",  # text
    "customers-frame-lgbm": "sandbox",  # DataFrame, LightGBM
    "xgb-classifier": "sandbox",  # XGBoost
    "xgb-regressor": "sandbox",  # a regressor: predict only
}
# Served a second time under "<name>-predict-fn" with parameters.extra.predict_fn.
PREDICT_FN = {"logistic-regression": "predict_proba", "xgb-classifier": "predict_proba"}
MODELS = zoo(only=list(SUBSET))
# Each model is also served as "plain-<name>" by MLServer's own SKLearnModel in the same server,
# and answers are compared on the wire; the user's class has no twin (MLServer cannot import
# it), so its reference is SKLearnModel in this process, where acme_models is importable.
NO_TWIN = {"user-classifier"}


@dataclass
class Served:
    url: str
    grpc_target: str
    repo: Path
    log: Path


@pytest.fixture(scope="module")
def zoo_loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(tmp_path_factory.mktemp("zoo-mlserver-loader"), models_root, {"local": authority.trust_config}, f"--user-code={USER_CODE}")
    yield proc
    stop_process(proc.process)


@pytest.fixture(scope="module")
def paths(models_root: Path, authority: Authority) -> dict[str, Path]:
    return write(MODELS, models_root, authority)


@pytest.fixture(scope="module")
def served(zoo_loader: LoaderProcess, paths: dict[str, Path], authority: Authority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`mlserver start` on a repository of the subset, one parallel worker, no user code on its path."""
    top = tmp_path_factory.mktemp("zoo-mlserver")
    repo = top / "repo"
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}]}  # no "execution": the default
    names = {name: name for name in SUBSET} | {f"{name}-predict-fn": name for name in PREDICT_FN}
    names |= {f"plain-{served_name}": name for served_name, name in names.items() if name not in NO_TWIN}
    for served_name, name in names.items():
        extra: dict[str, Any] = {} if served_name.startswith("plain-") else {"sigstore": policy}
        if served_name.endswith("-predict-fn"):
            extra["predict_fn"] = PREDICT_FN[name]
        implementation = "mlserver_sklearn.SKLearnModel" if served_name.startswith("plain-") else "runtime.SigstoreModel"
        settings = {"name": served_name, "implementation": implementation, "parameters": {"uri": str(paths[name]), "extra": extra}}
        (repo / served_name).mkdir(parents=True)
        (repo / served_name / "model-settings.json").write_text(json.dumps(settings))
    http, grpc_port = free_port(), free_port()
    env = {"MLSERVER_SIGSTORE_ENDPOINT": zoo_loader.endpoint, "MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(grpc_port),
           "MLSERVER_METRICS_PORT": str(free_port()), "MLSERVER_PARALLEL_WORKERS": "1", "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
           "PYTHONPATH": ""}
    (top / "cwd").mkdir()
    log = top / "mlserver.log"
    proc = start_mlserver(repo, top / "cwd", log, env)
    try:
        url = f"http://127.0.0.1:{http}"
        for served_name in names:
            loaded = requests.post(f"{url}/v2/repository/models/{served_name}/load", timeout=180)
            assert loaded.status_code == 200, f"{served_name}: {loaded.status_code} {loaded.text}"
        yield Served(url, f"127.0.0.1:{grpc_port}", repo, log)
    finally:
        stop_process(proc)


def _in_process(path: Path, request: InferenceRequest) -> InferenceResponse:
    """What MLServer's own SKLearnModel answers for the same file, in this process."""
    model = SKLearnModel(ModelSettings(name="plain", implementation=SKLearnModel, parameters=ModelParameters(uri=str(path))))

    async def go() -> InferenceResponse:
        await model.load()
        return await model.predict(request)

    return asyncio.run(go())


def _arrays(outputs: list[ResponseOutput]) -> list[tuple[str, str, list[int], list[Any]]]:
    """Each output as (name, datatype, shape, values), strings as str whatever the wire made them."""
    found = []
    for output in outputs:
        values = NumpyCodec.decode_output(output).ravel().tolist()
        values = [v.decode() if isinstance(v, bytes) else v for v in values]
        found.append((output.name, str(output.datatype), list(output.shape), values))
    return found


Answer = tuple[str, Any]  # ("ok", the outputs as _arrays) or ("error", the HTTP or gRPC status)


def _rest(served: Served, name: str, request: InferenceRequest) -> Answer:
    response = requests.post(f"{served.url}/v2/models/{name}/infer", json=request.model_dump(exclude_none=True), timeout=60)
    if response.status_code != 200:
        return "error", response.status_code
    return "ok", _arrays(InferenceResponse.model_validate(response.json()).outputs)


def for_grpc(request: InferenceRequest) -> InferenceRequest:
    """What a gRPC client sends: BYTES tensors carry bytes (a str does not fit the proto's bytes
    field), so text goes with the str codec (MLServer's NumPy codec cannot decode text from bytes)."""
    request = request.model_copy(deep=True)
    for tensor in request.inputs:
        if tensor.datatype == "BYTES":
            tensor.data.root = [v.encode() if isinstance(v, str) else v for v in tensor.data.root]
            tensor.parameters = tensor.parameters or Parameters()
            tensor.parameters.content_type = "str"
    return request


def _grpc(served: Served, name: str, request: InferenceRequest) -> Answer:
    message = ModelInferRequestConverter.from_types(for_grpc(request), model_name=name)
    with grpc.insecure_channel(served.grpc_target) as channel:
        try:
            answer = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=60)
        except grpc.RpcError as exc:
            return "error", exc.code().name
    return "ok", _arrays(ModelInferResponseConverter.to_types(answer).outputs)


SEND = {"rest": _rest, "grpc": _grpc}


def _expected(served: Served, paths: dict[str, Path], name: str, served_name: str, request: InferenceRequest, protocol: str) -> Answer:
    if name in NO_TWIN:
        sent = for_grpc(request) if protocol == "grpc" else request
        return "ok", _arrays(_in_process(paths[name], sent).outputs)
    return SEND[protocol](served, f"plain-{served_name}", request)


def _methods(model: ZooModel) -> list[str]:
    return ["predict"] + [m for m in ("predict_proba",) if hasattr(model.estimator, m)]


def _metadata_execution(served: Served, name: str) -> str:
    metadata = requests.get(f"{served.url}/v2/models/{name}", timeout=30).json()
    return str((metadata.get("parameters") or {}).get("sigstore_execution", ""))


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("name", sorted(SUBSET))
def test_a_zoo_model_served_by_mlserver_start_answers_like_plain_joblib(served: Served, paths: dict[str, Path], name: str, protocol: str) -> None:
    model = MODELS[name]
    execution = _metadata_execution(served, name)
    print(f"{name} ({protocol}): {execution}")
    assert execution == SUBSET[name]
    inputs = model.inputs
    if protocol == "rest" and isinstance(inputs, pd.DataFrame):
        # JSON has no NaN (MLServer's REST refuses it as json_invalid): REST clients fill the gaps.
        inputs = inputs.fillna(inputs.median(numeric_only=True))
    for method in _methods(model):
        request = request_for(inputs, method)
        expected = _expected(served, paths, name, name, request, protocol)
        got = SEND[protocol](served, name, request)
        print(f"  {method}: {got[0]}" + (f" {got[1]}" if got[0] == "error" else ""))
        assert got == expected, f"{method}: {got} != {expected}"
        # MLServer's gRPC converter cannot send str outputs (string labels): both fail alike.
        assert got[0] == "ok" or (protocol == "grpc" and got[1] == "INTERNAL"), got


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("name", sorted(PREDICT_FN))
def test_predict_fn_picks_the_method_when_the_request_names_no_output(served: Served, paths: dict[str, Path], name: str, protocol: str) -> None:
    request = request_for(MODELS[name].inputs, "predict")
    request.outputs = None
    expected = _expected(served, paths, name, f"{name}-predict-fn", request, protocol)
    got = SEND[protocol](served, f"{name}-predict-fn", request)
    assert got[0] == "ok" and [output[0] for output in got[1]] == [PREDICT_FN[name]], got
    assert got == expected


def test_mlserver_logs_the_path_each_model_took(served: Served) -> None:
    log = served.log.read_text(errors="replace")
    paths = {}
    for line in log.splitlines():
        start = line.find('{"event": "sigstore_model_loaded"')
        if start >= 0:
            record = json.loads(line[start:])
            paths[record["model"]] = record["execution"]
    assert {name: paths.get(name) for name in SUBSET} == SUBSET, paths
