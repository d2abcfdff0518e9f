"""Models served in the sandbox (policy `execution`), through SigstoreModel, a real loader and real
gRPC: predictions identical to plain joblib, and hostile models that act at predict time contained
(each with its unconfined positive control) while another model keeps serving."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_sklearn import SKLearnModel
from sklearn import datasets
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from runtime import SigstoreModel
from runtime.errors import ModelRefused, PredictFailed
from tests import hostile_predict
from tests.controls import listeners, wait_for_connections
from tests.support import ROOT, SIGNER, Authority, LoaderProcess, start_loader, stop_process

USER_CODE = ROOT / "examples" / "user_code"
sys.path.insert(0, str(USER_CODE))  # to build the user's models here; the loader gets --user-code
from acme_models import NearestCentroidScorer, log_ratio  # noqa: E402

DEADLINE_SECONDS = 20  # far above an honest predict here (milliseconds), on a busy host too
WORKER_MEMORY_MB = 384
MAX_PREDICT_MB = 8


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def served_loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("served-loader"), models_root, {"local": authority.trust_config},
        f"--user-code={USER_CODE}", f"--predict-deadline-seconds={DEADLINE_SECONDS}",
        f"--worker-memory-mb={WORKER_MEMORY_MB}", f"--max-predict-mb={MAX_PREDICT_MB}",
    )
    yield proc
    stop_process(proc.process)


def signed(models_root: Path, authority: Authority, name: str, estimator: Any = None, data: bytes | None = None) -> Path:
    folder = models_root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    if data is None:
        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        data = buffer.getvalue()
    path.write_bytes(data)
    authority.sign_file(path)
    return folder


def sigstore_model(folder: Path, loader: LoaderProcess, authority: Authority, execution: str, **extra: Any) -> SigstoreModel:
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": loader.endpoint, "execution": execution}
    settings = ModelSettings(
        name=folder.name, implementation=SigstoreModel, parameters=ModelParameters(uri=str(folder), extra={"sigstore": policy, **extra})
    )
    return SigstoreModel(settings)


def plain_model(folder: Path, **extra: Any) -> SKLearnModel:
    settings = ModelSettings(name=folder.name, implementation=SKLearnModel, parameters=ModelParameters(uri=str(folder), extra=extra))
    model = SKLearnModel(settings)
    assert run(model.load())
    return model


def request_for(x: np.ndarray | pd.DataFrame, outputs: list[str]) -> InferenceRequest:
    """What a client sends: a NumPy tensor, or a DataFrame column by column (content_type pd)."""
    wanted = [{"name": o} for o in outputs]
    if isinstance(x, pd.DataFrame):
        inputs = []
        for column in x.columns:
            values = x[column].to_numpy()
            datatype = {"f": "FP64", "i": "INT64", "b": "BOOL"}.get(values.dtype.kind, "BYTES")
            spec = {"name": column, "datatype": datatype, "shape": [len(values)], "data": values.tolist()}
            if datatype == "BYTES":
                spec["parameters"] = {"content_type": "str"}
            inputs.append(spec)
        return InferenceRequest.model_validate({"parameters": {"content_type": "pd"}, "inputs": inputs, "outputs": wanted})
    tensor = {"name": "x", "datatype": "FP64", "shape": list(x.shape), "data": x.flatten().tolist()}
    return InferenceRequest.model_validate({"inputs": [tensor], "outputs": wanted})


# --- models the server cannot validate, served identically ---------------------------------------

RNG = np.random.default_rng(7)
X = RNG.normal(size=(60, 4))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)
FRAME = pd.DataFrame({"a": RNG.normal(size=60), "n": RNG.integers(0, 9, 60), "op": RNG.choice(["+", "-", "*"], 60)})
LABELS = np.where(FRAME["a"] > 0, "high", "low")
DIGITS = datasets.load_digits()
DIGITS_X = DIGITS.data


def _cases() -> dict[str, tuple[Any, Any, list[str], str]]:
    """name: (fitted model, input, outputs, path under "auto")."""
    both = ["predict", "predict_proba"]
    passthrough = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["op"])], remainder="passthrough")
    return {
        # A user-defined class, importable only from the loader's --user-code folder.
        "user-class": (NearestCentroidScorer(0.5).fit(X, Y), X[:9], both, "sandbox"),
        # A FunctionTransformer with a user function, and with a NumPy ufunc.
        "user-function": (make_pipeline(FunctionTransformer(log_ratio), LogisticRegression()).fit(X, Y), X[:9], both, "sandbox"),
        # NumPy's element-wise functions from a short list are validated in process (log1p);
        # any other function is served in the sandbox (cosh).
        "log1p": (make_pipeline(FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression()).fit(np.abs(X), Y), np.abs(X[:9]), both, "server"),
        "cosh": (make_pipeline(FunctionTransformer(np.cosh), StandardScaler(), LogisticRegression()).fit(X, Y), X[:9], both, "sandbox"),
        # "passthrough" columns on a DataFrame of mixed dtypes with string labels.
        "passthrough-frame": (make_pipeline(passthrough, LogisticRegression()).fit(FRAME, LABELS), FRAME[:9], both, "server"),
        # Predicting asks joblib how many CPUs there are (it reads cgroup files), or starts threads.
        "knn": (KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(X, Y), X[:9], both, "server"),
        "forest-n-jobs": (RandomForestClassifier(n_estimators=8, n_jobs=-1, random_state=0).fit(X, Y), X[:9], both, "server"),
        # An allowlisted model: "auto" hands it back; "sandbox" serves it all the same.
        "digits-svc": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(DIGITS_X, DIGITS.target), DIGITS_X[-8:], both, "server"),
    }


CASES = _cases()


@pytest.mark.parametrize("execution", ["auto", "sandbox"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_served_in_the_sandbox_predicts_like_plain_joblib(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, case: str, execution: str
) -> None:
    estimator, x, outputs, auto_path = CASES[case]
    folder = signed(models_root, authority, f"{case}-{execution}", estimator)
    model = sigstore_model(folder, served_loader, authority, execution)
    assert run(model.load())
    expected_path = auto_path if execution == "auto" else "sandbox"
    print(f"{case} ({execution}): {model.execution}: {model.execution_reason}")
    assert model.execution == expected_path, model.execution_reason
    plain = plain_model(folder)
    for wanted in ([o] for o in outputs):
        ours = run(model.predict(request_for(x, wanted)))
        theirs = run(plain.predict(request_for(x, wanted)))
        assert [o.model_dump() for o in ours.outputs] == [o.model_dump() for o in theirs.outputs]
    both = run(model.predict(request_for(x, outputs)))
    assert [o.name for o in both.outputs] == outputs
    metadata = run(model.metadata())
    assert metadata.parameters is not None and metadata.parameters.sigstore_execution == expected_path  # type: ignore[attr-defined]
    assert run(model.unload())


def test_execution_server_refuses_what_it_cannot_validate(served_loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    estimator, *_ = CASES["cosh"]
    folder = signed(models_root, authority, "cosh-server", estimator)
    with pytest.raises(ModelRefused, match="numpy.cosh") as refused:
        run(sigstore_model(folder, served_loader, authority, "server").load())
    assert refused.value.status_code == 422


def test_user_code_is_not_importable_without_the_flag(tmp_path: Path, models_root: Path, authority: Authority) -> None:
    """Control for --user-code: without it, the worker cannot import the user's class."""
    folder = signed(models_root, authority, "user-class-no-flag", NearestCentroidScorer().fit(X, Y))
    proc = start_loader(tmp_path, models_root, {"local": authority.trust_config})
    try:
        with pytest.raises(ModelRefused, match="No module named 'acme_models'") as refused:
            run(sigstore_model(folder, proc, authority, "sandbox").load())
        assert refused.value.status_code == 422
        assert "loader serve --user-code DIR" in str(refused.value), "the refusal must say how to make user code importable"
    finally:
        stop_process(proc.process)


def test_user_code_inside_the_models_root_is_refused(tmp_path: Path, models_root: Path) -> None:
    import subprocess

    from tests.support import PYTHON

    inside = models_root / "code"
    inside.mkdir(exist_ok=True)
    argv = [PYTHON, "-m", "loader", "serve", f"--socket={tmp_path / 's.sock'}", f"--models-root={models_root}", f"--user-code={inside}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "overlaps the models root" in done.stderr, done.stderr


def test_docker_mode_refuses_execution_sandbox(models_root: Path, authority: Authority) -> None:
    """An ephemeral loader lives for one load: it cannot serve a model afterwards."""
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "sandbox": "docker", "execution": "sandbox"}
    folder = signed(models_root, authority, "docker-sandbox", NearestCentroidScorer().fit(X, Y))
    settings = ModelSettings(name=folder.name, implementation=SigstoreModel, parameters=ModelParameters(uri=str(folder), extra={"sigstore": policy}))
    with pytest.raises(ModelRefused, match="execution 'sandbox' needs a loader that lives as long as the model") as refused:
        run(SigstoreModel(settings).load())
    assert refused.value.status_code == 400


# --- hostile models acting at predict time --------------------------------------------------------


@pytest.fixture(scope="module")
def bystander(served_loader: LoaderProcess, models_root: Path, authority: Authority) -> Iterator[SigstoreModel]:
    """A good model served in the sandbox beside every hostile one: it must keep serving."""
    estimator, *_ = CASES["digits-svc"]
    model = sigstore_model(signed(models_root, authority, "bystander", estimator), served_loader, authority, "sandbox")
    assert run(model.load())
    yield model
    run(model.unload())


def assert_still_serving(bystander: SigstoreModel, loader: LoaderProcess) -> None:
    assert loader.process.poll() is None, "the loader died"
    response = run(bystander.predict(request_for(DIGITS_X[-8:], ["predict"])))
    estimator, *_ = CASES["digits-svc"]
    assert response.outputs[0].data.root == estimator.predict(DIGITS_X[-8:]).tolist()


@pytest.mark.parametrize("case", sorted(hostile_predict.TECHNIQUES))
def test_a_model_acting_at_predict_time_is_contained(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, bystander: SigstoreModel, tmp_path: Path, case: str
) -> None:
    technique = hostile_predict.TECHNIQUES[case]
    secret = tmp_path / "secret"
    secret.write_text("secret")
    import subprocess

    def bystander_process() -> subprocess.Popen:
        return subprocess.Popen(["sleep", "600"], env={"SECRET": "x" * 64})

    other = bystander_process()
    with listeners(tmp_path) as (port, _, accepted):
        target = hostile_predict.Target(canary=str(tmp_path / "pwnd"), secret=str(secret), port=port, bystander_pid=other.pid)
        folder = signed(models_root, authority, f"hostile-predict-{case}", data=hostile_predict.acting_at_predict(technique.body(target)))

        seen = hostile_predict.run_control(folder / "model.joblib", technique, target, cwd=tmp_path)
        seen.connections = wait_for_connections(accepted, case == "network")
        assert technique.fired(target, seen), f"the payload did not fire unconfined: {seen}"
        Path(target.canary).unlink(missing_ok=True)
        accepted.clear()
        if case == "signal-another-process":
            assert other.wait(10) == -9, "the control did not kill the other process"
        if other.poll() is not None:  # the control killed it: the sandboxed run gets a live one
            other = bystander_process()
            folder = signed(models_root, authority, f"hostile-predict-{case}-2", data=hostile_predict.acting_at_predict(
                technique.body(hostile_predict.Target(target.canary, target.secret, port, other.pid))))

        model = sigstore_model(folder, served_loader, authority, "sandbox")
        assert run(model.load())  # unpickling runs nothing: the payload waits for predict
        try:
            run(model.predict(request_for(np.ones((hostile_predict.ROWS, 3)), ["predict"])))
        except PredictFailed as exc:
            refused = exc
        except Exception as exc:  # noqa: BLE001 - anything else got past the runtime's checks
            pytest.fail(f"the runtime let {type(exc).__name__} out instead of refusing the answer: {exc}"[:2000])
        else:
            pytest.fail("the sandboxed predict answered")
        message = str(refused)
        print(f"{case}: control {seen}; sandboxed: {refused.status_code} {message}")
        assert refused.status_code in technique.status, message
        assert any(reason in message for reason in technique.refusal), message
        assert not Path(target.canary).exists()
        assert wait_for_connections(accepted, False) == 0
        assert other.poll() is None, "the sandboxed payload killed another process"
        run(model.unload())
    other.kill()
    other.wait()
    assert_still_serving(bystander, served_loader)


def test_a_model_past_its_deadline_fails_that_request_and_loads_again(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, bystander: SigstoreModel
) -> None:
    slow_on_request = hostile_predict.acting_at_predict("import time\nif X[0, 0] > 100:\n    time.sleep(3600)\nreturn np.zeros(len(X))")
    folder = signed(models_root, authority, "slow-on-request", data=slow_on_request)
    model = sigstore_model(folder, served_loader, authority, "sandbox")
    assert run(model.load())
    assert run(model.predict(request_for(np.ones((2, 3)), ["predict"]))).outputs[0].shape == [2, 1]
    with pytest.raises(PredictFailed, match="did not answer within") as late:
        run(model.predict(request_for(np.full((2, 3), 1000.0), ["predict"])))
    assert late.value.status_code == 504
    with pytest.raises(PredictFailed, match="load the model again") as ended:
        run(model.predict(request_for(np.ones((2, 3)), ["predict"])))
    assert ended.value.status_code == 502
    assert_still_serving(bystander, served_loader)
    again = sigstore_model(folder, served_loader, authority, "sandbox")
    assert run(again.load())
    assert run(again.predict(request_for(np.ones((2, 3)), ["predict"]))).outputs[0].shape == [2, 1]
    run(again.unload())


@pytest.mark.parametrize(
    ("method", "array", "words"),
    [
        ("predict", {"dtype": "<f8", "shape": [2, 64], "data": b"\0" * 3}, "do not hold a <f8 array"),
        ("predict", {"dtype": "|O", "shape": [1], "data": b"\0" * 8}, "is not accepted"),
        ("__reduce__", {"dtype": "<f8", "shape": [1, 64], "data": b"\0" * 512}, "expected one of"),
    ],
)
def test_a_malformed_predict_request_is_refused_and_the_worker_keeps_serving(
    served_loader: LoaderProcess, bystander: SigstoreModel, method: str, array: dict, words: str
) -> None:
    import grpc

    from loader.proto.v1 import loader_pb2, loader_pb2_grpc

    handle = bystander._model.handle
    request = loader_pb2.PredictRequest(handle=handle, method=method, inputs=[loader_pb2.Array(name="x", **array)])
    with grpc.insecure_channel(served_loader.endpoint) as channel, pytest.raises(grpc.RpcError) as refused:
        loader_pb2_grpc.LoaderStub(channel).Predict(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in refused.value.details()
    assert_still_serving(bystander, served_loader)


def test_the_cli_serves_in_the_sandbox_unloads_and_health_says_so(served_loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    import subprocess

    from tests.support import PYTHON

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "loader", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    folder = signed(models_root, authority, "cli-sandbox", NearestCentroidScorer().fit(X, Y))
    policy = ["--cert-identity", SIGNER, "--cert-oidc-issuer", authority.issuer]
    loaded = cli("load", "--endpoint", served_loader.endpoint, *policy, "--execution", "sandbox", f"{folder.name}/model.joblib")
    assert loaded.returncode == 0 and "served in the sandbox with methods ['predict', 'predict_proba']" in loaded.stdout, loaded.stderr
    handle = loaded.stdout.split("handle ")[1].split()[0]
    details = cli("health", "--details", "--endpoint", served_loader.endpoint)
    assert f"user code from {USER_CODE}" in details.stdout and "served in the sandbox: " in details.stdout, details.stdout
    assert cli("unload", "--endpoint", served_loader.endpoint, handle).stdout.strip() == "OK: ended"
    assert cli("unload", "--endpoint", served_loader.endpoint, handle).stdout.strip() == "OK: no model was served under that handle"


def test_mlserver_serves_a_user_class_from_the_sandbox_over_rest(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, tmp_path: Path
) -> None:
    """`mlserver start` with a parallel worker: the user's class is never importable by MLServer
    (acme_models is not on its path), yet the model serves; unloading ends its worker."""
    import json

    import grpc
    import requests

    from loader.proto.v1 import loader_pb2, loader_pb2_grpc
    from tests.support import free_port, start_mlserver

    estimator = NearestCentroidScorer(0.5).fit(X, Y)
    folder = signed(models_root, authority, "rest-user-class", estimator)
    repo = tmp_path / "repo"
    (repo / "user-class").mkdir(parents=True)
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}]}
    settings = {"name": "user-class", "implementation": "runtime.SigstoreModel",
                "parameters": {"uri": str(folder / "model.joblib"), "extra": {"sigstore": policy}}}
    (repo / "user-class" / "model-settings.json").write_text(json.dumps(settings))
    http = free_port()
    env = {"MLSERVER_SIGSTORE_ENDPOINT": served_loader.endpoint, "MLSERVER_HTTP_PORT": str(http),
           "MLSERVER_GRPC_PORT": str(free_port()), "MLSERVER_METRICS_PORT": str(free_port()),
           "MLSERVER_PARALLEL_WORKERS": "1", "MLSERVER_LOAD_MODELS_AT_STARTUP": "false", "PYTHONPATH": ""}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = start_mlserver(repo, cwd, tmp_path / "mlserver.log", env)

    def served() -> int:
        with grpc.insecure_channel(served_loader.endpoint) as channel:
            return loader_pb2_grpc.LoaderStub(channel).Describe(loader_pb2.DescribeRequest(), timeout=10).served_models

    try:
        before = served()
        url = f"http://127.0.0.1:{http}"
        assert requests.post(f"{url}/v2/repository/models/user-class/load", timeout=120).status_code == 200
        assert served() == before + 1
        x = X[:7]
        payload = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP64", "data": x.flatten().tolist()}],
                   "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
        response = requests.post(f"{url}/v2/models/user-class/infer", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs["predict"] == estimator.predict(x).tolist()
        assert np.array_equal(np.array(outputs["predict_proba"]), estimator.predict_proba(x).ravel())
        assert requests.post(f"{url}/v2/repository/models/user-class/unload", timeout=60).status_code == 200
        assert served() == before
    finally:
        stop_process(proc)
    log = (tmp_path / "mlserver.log").read_text()
    assert '"execution": "sandbox"' in log


# --- the direct channel, and the workers' lifetime ------------------------------------------------

# Answers every request with its worker's pid (getpid is allowed): the test can then watch it.
_PID_MODEL = hostile_predict.acting_at_predict("import os\nreturn np.full(len(X), os.getpid())")


def test_requests_go_on_the_workers_direct_channel(served_loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    model = sigstore_model(signed(models_root, authority, "direct-channel", data=_PID_MODEL), served_loader, authority, "sandbox")
    assert run(model.load())
    estimator = model._model
    assert estimator.channel is not None, "the loader gave no direct channel to the worker"
    first = run(model.predict(request_for(np.ones((3, 3)), ["predict"]))).outputs[0].data.root
    second = run(model.predict(request_for(np.ones((5, 3)), ["predict"]))).outputs[0].data.root
    assert len(set(first + second)) == 1 and first[0] > 0
    assert not estimator.channel.closed, "the channel was dropped after a good answer"
    run(model.unload())


def _filled(value: float, rows: int) -> InferenceRequest:
    return request_for(np.full((rows, 3), value), ["transform"])


def test_concurrent_requests_each_get_their_own_answer(served_loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    """Sixteen requests in flight at once on the direct channel (pipelined): each answer is the
    one for its own request (an identity transform of distinct values and row counts)."""
    model = sigstore_model(signed(models_root, authority, "pipelined", FunctionTransformer()), served_loader, authority, "sandbox")
    assert run(model.load())
    assert model._model.channel is not None, "the loader gave no direct channel to the worker"

    async def burst() -> list[InferenceResponse]:
        return await asyncio.gather(*(model.predict(_filled(float(i), 1 + i % 5)) for i in range(16)))

    try:
        for i, response in enumerate(run(burst())):
            assert response.outputs[0].data.root == [float(i)] * 3 * (1 + i % 5), f"request {i} got another's answer"
    finally:
        run(model.unload())


def test_a_cancelled_request_leaves_the_channel_in_step(served_loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    """A caller cancelled while its request is with the worker (a gRPC client that gave up): the
    answer is read and dropped, the worker keeps serving on the same channel, and the next request
    gets its own answer, not the dropped one."""
    model = sigstore_model(signed(models_root, authority, "cancelled", FunctionTransformer()), served_loader, authority, "sandbox")
    assert run(model.load())
    estimator = model._model
    assert estimator.channel is not None, "the loader gave no direct channel to the worker"

    async def scenario() -> tuple[bool, list[float]]:
        first = asyncio.create_task(model.predict(_filled(1.0, 3)))
        # One turn of the loop: the task writes its request and waits; no answer can be read
        # before this coroutine runs again (the loop polls for input only between turns).
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = await model.predict(_filled(2.0, 5))
        return first.cancelled(), second.outputs[0].data.root

    try:
        cancelled, values = run(scenario())
        assert cancelled, "the first request was not cancelled while it waited"
        assert values == [2.0] * 15, f"the next request got {values[:6]}..., not its own answer"
        assert not estimator.channel.closed and not estimator.ended, "the channel or the worker was ended by a cancelled caller"
        assert run(model.predict(_filled(3.0, 2))).outputs[0].data.root == [3.0] * 6
    finally:
        run(model.unload())


# An MLServer-like client: loads the model in the sandbox, prints its worker's pid, then waits to
# be killed (it never unloads).
_CLIENT = """
import asyncio, json, sys
import numpy as np
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse
from runtime import SigstoreModel
folder, policy = sys.argv[1], json.loads(sys.argv[2])
settings = ModelSettings(name="orphan", implementation=SigstoreModel,
                         parameters=ModelParameters(uri=folder, extra={"sigstore": policy}))
model = SigstoreModel(settings)
async def main():
    await model.load()
    request = InferenceRequest.model_validate(
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}], "outputs": [{"name": "predict"}]})
    response = await model.predict(request)
    print(int(response.outputs[0].data.root[0]), flush=True)
    sys.stdin.read()
asyncio.run(main())
"""


def test_a_killed_client_takes_its_sandboxed_workers_with_it(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, bystander: SigstoreModel
) -> None:
    """SIGKILL an MLServer-like process that serves a model in the sandbox: its worker ends (the
    kernel closes the client's end of the direct channel), waited for on a pidfd, not a sleep."""
    import json
    import os
    import select
    import signal
    import subprocess

    from tests.support import PYTHON

    folder = signed(models_root, authority, "orphaned", data=_PID_MODEL)
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": served_loader.endpoint, "execution": "sandbox"}
    client = subprocess.Popen([PYTHON, "-c", _CLIENT, str(folder), json.dumps(policy)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line.strip().isdigit(), f"the client did not serve the model: {line!r}"
        worker = os.pidfd_open(int(line))
        try:
            assert select.select([worker], [], [], 0)[0] == [], "the worker ended while its client lived"
            client.send_signal(signal.SIGKILL)
            client.wait()
            # Only a bound for a broken build (where the worker lives on); the worker ends at once.
            ended, _, _ = select.select([worker], [], [], 60)
            assert ended == [worker], "the sandboxed worker outlived the process that served its model"
        finally:
            os.close(worker)
    finally:
        client.kill()
        client.wait()
    assert_still_serving(bystander, served_loader)


@pytest.mark.parametrize(
    ("case", "refusal"), [("forged-object-dtype", "does not pass on"), ("forged-nested-header", "malformed header")], ids=["object-dtype", "nested-header"]
)
def test_predict_refuses_a_forged_answer_the_runtime_never_sees(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, bystander: SigstoreModel, case: str, refusal: str
) -> None:
    """Predict (the path without a direct channel: the CLI, a TCP endpoint) checks answers in the
    loader too: a forged object dtype, or a header nested past the JSON parser's depth, is refused
    there, before any caller parses it (the controls are in the test above)."""
    import grpc

    from loader.proto.v1 import loader_pb2, loader_pb2_grpc

    forged = hostile_predict.acting_at_predict(hostile_predict.TECHNIQUES[case].body(hostile_predict.Target("", "", 0, 0)))
    model = sigstore_model(signed(models_root, authority, f"{case}-through-predict", data=forged), served_loader, authority, "sandbox")
    assert run(model.load())
    x = np.ones((hostile_predict.ROWS, 3))
    request = loader_pb2.PredictRequest(
        handle=model._model.handle, method="predict",
        inputs=[loader_pb2.Array(name="x", dtype=x.dtype.str, shape=x.shape, data=x.tobytes())],
    )
    try:
        with grpc.insecure_channel(served_loader.endpoint) as channel, pytest.raises(grpc.RpcError) as refused:
            loader_pb2_grpc.LoaderStub(channel).Predict(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INTERNAL and refusal in refused.value.details(), refused.value.details()
    finally:
        run(model.unload())
    assert_still_serving(bystander, served_loader)


def test_a_model_the_child_cannot_convert_is_served_from_the_bytes_verified_once(
    served_loader: LoaderProcess, models_root: Path, authority: Authority
) -> None:
    """`auto` with a user class (the conversion child cannot import it): the loader keeps the
    verified bytes under a ticket sent with its refusal, and Serve takes them by that ticket: the
    artefact is verified once, and the loader's log does not call the first attempt a refusal."""
    folder = signed(models_root, authority, "verified-once", NearestCentroidScorer(0.5).fit(X, Y))
    model = sigstore_model(folder, served_loader, authority, "auto")
    assert run(model.load())
    assert model.execution == "sandbox" and "could not convert" in model.execution_reason, model.execution_reason
    lines = [json.loads(line) for line in served_loader.log_text().splitlines() if line.startswith("{") and "verified-once" in line]
    loads = [line for line in lines if line.get("event") == "verify_and_load"]
    serves = [line for line in lines if line.get("event") == "serve"]
    assert [line["verdict"] for line in loads] == ["kept for the sandbox"], loads
    assert len(serves) == 1 and serves[0]["verdict"] == "served", serves
    assert "timings" in serves[0] and "verify" not in serves[0]["timings"], serves[0]  # not verified again
    assert run(model.predict(request_for(X[:9], ["predict"]))).outputs[0].shape == [9, 1]
    assert run(model.unload())


# Owns its worker: every answer goes out twice, in one write (so both frames are there together).
_TWICE = hostile_predict.acting_at_predict(
    "import sys\nw = sys.modules.get('loader._internal.worker')\nif w is not None:\n"
    "    def twice(fd, payload):\n"
    "        one = w.frame(payload) + b''.join(bytes(memoryview(b)) for b in payload.buffers)\n"
    "        w._write_all(fd, one + one)\n"
    "    w._send = twice\n"
    "return X[:, 0].copy()"
)
_TWICE_CONTROL = """
import socket, sys
import joblib, numpy as np
import loader._internal.worker as worker
from loader.contract import FRAME
model = joblib.load(sys.argv[1])
ours, theirs = socket.socketpair()
answer = worker._plain(model.predict(np.full((2, 3), 7.0)))  # the model rewrites worker._send here
worker._send(ours.fileno(), answer)
ours.close()
data, frames = b"".join(iter(lambda: theirs.recv(65536), b"")), 0
while data:
    header_len, body_len = FRAME.unpack(data[: FRAME.size])
    data, frames = data[FRAME.size + header_len + body_len :], frames + 1
print(frames)
"""


def _twice_control(folder: Path) -> int:
    import subprocess

    from tests.support import PYTHON

    done = subprocess.run([PYTHON, "-c", _TWICE_CONTROL, str(folder / "model.joblib")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return int(done.stdout.strip() or 0)


def test_a_worker_answering_twice_is_ended_on_the_direct_channel(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, bystander: SigstoreModel
) -> None:
    """The second answer to one request would be the next request's (another caller's data):
    read with no request waiting, it is refused, and the next request says so (502) and ends the
    worker, rather than getting it or a bare "worker exited"."""
    folder = signed(models_root, authority, "answers-twice", data=_TWICE)
    assert _twice_control(folder) == 2, "the control did not see two answers to one request"
    model = sigstore_model(folder, served_loader, authority, "sandbox")
    assert run(model.load())
    assert model._model.channel is not None

    async def requests() -> tuple[list[float], PredictFailed]:
        # The first predict rewrites the worker's sender (after it was looked up for this answer):
        # the second answer goes out twice, and the third request finds the extra one.
        await model.predict(request_for(np.full((2, 3), 1.0), ["predict"]))
        second = await model.predict(request_for(np.full((2, 3), 2.0), ["predict"]))
        with pytest.raises(PredictFailed) as third:
            await model.predict(request_for(np.full((2, 3), 3.0), ["predict"]))
        return second.outputs[0].data.root, third.value

    try:
        answer, refused = run(requests())
        assert answer == [2.0, 2.0]
        assert refused.status_code == 502 and "answer to no request" in str(refused), refused
        assert model._model.ended, "the worker was not ended"
    finally:
        run(model.unload())
    assert_still_serving(bystander, served_loader)


def test_a_worker_answering_twice_is_ended_on_predict(
    served_loader: LoaderProcess, models_root: Path, authority: Authority, bystander: SigstoreModel
) -> None:
    """The same through the loader's Predict (no direct channel): the leftover answer is seen
    before the next request is sent, and the worker is ended instead of handing it over."""
    import grpc

    from loader.proto.v1 import loader_pb2, loader_pb2_grpc

    folder = signed(models_root, authority, "answers-twice-predict", data=_TWICE)
    assert _twice_control(folder) == 2, "the control did not see two answers to one request"
    model = sigstore_model(folder, served_loader, authority, "sandbox")
    assert run(model.load())

    def call(value: float) -> loader_pb2.PredictResponse:
        x = np.full((2, 3), value)
        request = loader_pb2.PredictRequest(handle=model._model.handle, method="predict",
                                            inputs=[loader_pb2.Array(name="x", dtype=x.dtype.str, shape=x.shape, data=x.tobytes())])
        with grpc.insecure_channel(served_loader.endpoint) as channel:
            return loader_pb2_grpc.LoaderStub(channel).Predict(request, timeout=60)

    try:
        call(1.0)  # rewrites the worker's sender: the next answer goes out twice
        assert np.frombuffer(call(2.0).output.data, "<f8").tolist() == [2.0, 2.0]
        with pytest.raises(grpc.RpcError) as refused:
            call(3.0)
        assert "answer to no request" in refused.value.details(), refused.value.details()
    finally:
        run(model.unload())
    assert_still_serving(bystander, served_loader)


_SURROGATE_ERROR = hostile_predict.acting_at_predict(
    "raise ValueError('cannot read caf' + b'\\xe9'.decode('utf-8', 'surrogateescape') + ' ' + '\\u00e9' * 2000)"
)


def test_an_error_text_utf8_cannot_encode_is_passed_on_escaped(
    served_loader: LoaderProcess, models_root: Path, authority: Authority
) -> None:
    """An honest model's error quoting a non-UTF-8 file name (a lone surrogate) and long non-ASCII
    text: MLServer's JSON encoder (orjson) and gRPC's status details (percent-encoded, 8 KiB) failed
    on it, and the cause was lost. It is passed on escaped and cut, on both paths."""
    import pickle

    import grpc

    from loader.proto.v1 import loader_pb2, loader_pb2_grpc

    with pytest.raises(ValueError) as raw:  # what the model raises, in this process (it only raises)
        pickle.loads(_SURROGATE_ERROR).predict(np.ones((2, 3)))
    with pytest.raises(UnicodeEncodeError):
        str(raw.value).encode("utf-8")
    model = sigstore_model(signed(models_root, authority, "surrogate-error", data=_SURROGATE_ERROR), served_loader, authority, "sandbox")
    assert run(model.load())
    try:
        with pytest.raises(PredictFailed) as failed:
            run(model.predict(request_for(np.ones((2, 3)), ["predict"])))
        message = str(failed.value)
        assert failed.value.status_code == 500 and "cannot read caf\\udce9" in message, message[:300]
        assert len(message.encode("utf-8")) < 2000
        x = np.ones((2, 3))
        request = loader_pb2.PredictRequest(handle=model._model.handle, method="predict",
                                            inputs=[loader_pb2.Array(name="x", dtype=x.dtype.str, shape=x.shape, data=x.tobytes())])
        with grpc.insecure_channel(served_loader.endpoint) as channel, pytest.raises(grpc.RpcError) as refused:
            loader_pb2_grpc.LoaderStub(channel).Predict(request, timeout=60)
        assert "cannot read caf\\udce9" in refused.value.details(), refused.value.details()[:300]
    finally:
        run(model.unload())
