"""Drop-in proof: the scenarios of MLServer's own scikit-learn runtime tests, run against
SigstoreModel with signed fixtures loaded through a real loader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from mlserver.codecs import CodecError
from mlserver.errors import InferenceError
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, RequestOutput
from mlserver_sklearn import SKLearnModel
from mlserver_sklearn.sklearn import (
    PREDICT_FN_KEY,
    PREDICT_OUTPUT,
    PREDICT_PROBA_OUTPUT,
    PREDICT_TRANSFORM,
    WELLKNOWN_MODEL_FILENAMES,
)
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from runtime import SigstoreModel
from tests.support import SIGNER, Authority, LoaderProcess


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture()
def make_model(models_root: Path, authority: Authority, loader: LoaderProcess, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    def make(estimator: object, filename: str = "model.joblib", extra: dict | None = None) -> SigstoreModel:
        folder = models_root / request.node.name.replace("[", "-").replace("]", "")
        folder.mkdir(exist_ok=True)
        path = folder / filename
        joblib.dump(estimator, path)
        authority.sign_file(path)
        policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": loader.endpoint}
        settings = ModelSettings(
            name=folder.name,
            implementation=SigstoreModel,
            parameters=ModelParameters(uri=str(folder if filename in WELLKNOWN_MODEL_FILENAMES else path), version="v1.2.3", extra={"sigstore": policy, **(extra or {})}),
        )
        model = SigstoreModel(settings)
        assert run(model.load())
        # The same file served by MLServer's own runtime, to compare every response with.
        plain = SKLearnModel(
            ModelSettings(name=folder.name, implementation=SKLearnModel, parameters=ModelParameters(uri=settings.parameters.uri, version="v1.2.3", extra=extra or {}))
        )
        assert run(plain.load())
        PLAIN[id(model)] = plain
        return model

    return make


PLAIN: dict[int, SKLearnModel] = {}


def predict_like_plain(model: SigstoreModel, request: InferenceRequest) -> InferenceResponse:
    """Predict with SigstoreModel and with plain SKLearnModel on the same file: the outputs must match."""
    ours = run(model.predict(request.model_copy(deep=True)))
    theirs = run(PLAIN[id(model)].predict(request.model_copy(deep=True)))
    assert [o.model_dump() for o in ours.outputs] == [o.model_dump() for o in theirs.outputs]
    assert ours.parameters == theirs.parameters
    return ours


def _classifier() -> DummyClassifier:
    return DummyClassifier(strategy="prior").fit(np.random.rand(4, 1), np.array([0, 1, 0, 1]))


def _regressor() -> DummyRegressor:
    return DummyRegressor().fit(np.random.rand(4, 1), np.random.rand(4))


def _frame() -> tuple[pd.DataFrame, pd.Series]:
    data = pd.DataFrame({"a": [1, 2, 3], "op": ["+", "+", "-"], "y": [11, 22, -33]})
    return data.drop("y", axis=1), data["y"]


def _preprocessor() -> ColumnTransformer:
    return ColumnTransformer([("num", StandardScaler(), ["a"]), ("cat", OneHotEncoder(handle_unknown="ignore"), ["op"])])


def _pandas_pipeline() -> Pipeline:
    x, y = _frame()
    return Pipeline([("preprocessor", _preprocessor()), ("regression", DummyRegressor())]).fit(x, y)


def _request() -> InferenceRequest:
    return InferenceRequest(inputs=[RequestInput(name="input-0", shape=[3, 1], datatype="FP32", data=[1.0, 2.0, 3.0])])


def _pandas_request() -> InferenceRequest:
    return InferenceRequest.model_validate(
        {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": "a", "datatype": "INT32", "data": [10], "shape": [1]},
                {"name": "op", "datatype": "BYTES", "data": ["-"], "shape": [1], "parameters": {"content_type": "str"}},
            ],
        }
    )


def test_load(make_model) -> None:  # type: ignore[no-untyped-def]
    model = make_model(_classifier())  # asserts that load() returned True, as SKLearnModel's does
    assert type(model._model) is DummyClassifier
    assert model.verification.identity == SIGNER


def test_regression_load(make_model) -> None:  # type: ignore[no-untyped-def]
    assert type(make_model(_regressor())._model) is DummyRegressor


def test_pandas_load(make_model) -> None:  # type: ignore[no-untyped-def]
    assert type(make_model(_pandas_pipeline())._model) is Pipeline


@pytest.mark.parametrize("filename", WELLKNOWN_MODEL_FILENAMES)
def test_load_folder(make_model, filename: str) -> None:  # type: ignore[no-untyped-def]
    assert type(make_model(_classifier(), filename)._model) is DummyClassifier


def test_multiple_inputs_error(make_model) -> None:  # type: ignore[no-untyped-def]
    model = make_model(_classifier())
    request = _request()
    request.inputs.append(RequestInput(name="input-1", shape=[2], data=[0, 1], datatype="FP32"))
    with pytest.raises(CodecError):
        run(model.predict(request))


def test_invalid_output_error(make_model) -> None:  # type: ignore[no-untyped-def]
    request = _request()
    request.outputs = [RequestOutput(name="something_else")]
    with pytest.raises(InferenceError):
        run(make_model(_classifier()).predict(request))


@pytest.mark.parametrize("outputs", [[], [PREDICT_OUTPUT], [PREDICT_PROBA_OUTPUT], [PREDICT_OUTPUT, PREDICT_PROBA_OUTPUT]])
def test_predict(make_model, outputs: list[str]) -> None:  # type: ignore[no-untyped-def]
    request = _request()
    request.outputs = [RequestOutput(name=o) for o in outputs]
    response = predict_like_plain(make_model(_classifier()), request)
    expected = outputs or [PREDICT_OUTPUT]
    assert [o.name for o in response.outputs] == expected
    assert all(o.shape[0] == 3 for o in response.outputs)


@pytest.mark.parametrize("outputs", [[], [PREDICT_OUTPUT]])
def test_pandas_predict(make_model, outputs: list[str]) -> None:  # type: ignore[no-untyped-def]
    request = _pandas_request()
    request.outputs = [RequestOutput(name=o) for o in outputs]
    response = predict_like_plain(make_model(_pandas_pipeline()), request)
    assert [o.name for o in response.outputs] == (outputs or [PREDICT_OUTPUT])
    assert response.outputs[0].shape[0] == 1


def test_no_predict_proba_for_regression_models(make_model) -> None:  # type: ignore[no-untyped-def]
    request = _request()
    request.outputs = [RequestOutput(name=PREDICT_PROBA_OUTPUT)]
    with pytest.raises(InferenceError):
        run(make_model(_regressor()).predict(request))


def test_no_predict_proba_for_regression_pipelines(make_model) -> None:  # type: ignore[no-untyped-def]
    request = _pandas_request()
    request.outputs = [RequestOutput(name=PREDICT_PROBA_OUTPUT)]
    with pytest.raises(InferenceError):
        run(make_model(_pandas_pipeline()).predict(request))


def test_predict_fn_transform(make_model) -> None:  # type: ignore[no-untyped-def]
    x, y = _frame()
    model = make_model(_preprocessor().fit(x, y), extra={PREDICT_FN_KEY: PREDICT_TRANSFORM})
    response = predict_like_plain(model, _pandas_request())
    assert response.outputs[0].name == PREDICT_TRANSFORM
    # One row in; one column for "a" plus one per category of "op" out.
    assert response.outputs[0].shape == [1, 3]


def test_predict_fn_transform_output_shape(make_model) -> None:  # type: ignore[no-untyped-def]
    model = make_model(StandardScaler().fit(np.random.rand(5, 1)), extra={PREDICT_FN_KEY: PREDICT_TRANSFORM})
    response = predict_like_plain(model, _request())
    assert response.outputs[0].name == PREDICT_TRANSFORM and response.outputs[0].shape == [3, 1]


def _dataframe_regressor() -> Pipeline:
    """A pipeline whose transform returns a DataFrame (scikit-learn's set_output API)."""
    x, y = _frame()
    dense = ColumnTransformer([("num", StandardScaler(), ["a"]), ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["op"])])
    return Pipeline([("preprocessor", dense)]).set_output(transform="pandas").fit(x, y)


def test_dataframe_output_transform(make_model) -> None:  # type: ignore[no-untyped-def]
    """MLServer encodes a DataFrame result column by column (PandasCodec): so does SigstoreModel."""
    model = make_model(_dataframe_regressor(), extra={PREDICT_FN_KEY: PREDICT_TRANSFORM})
    response = predict_like_plain(model, _pandas_request())
    assert [o.name for o in response.outputs] == ["num__a", "cat__op_+", "cat__op_-"]
    assert all(o.shape == [1, 1] for o in response.outputs)


@pytest.mark.parametrize("outputs", [[], [PREDICT_OUTPUT]])
def test_dataframe_output_predict(make_model, outputs: list[str]) -> None:  # type: ignore[no-untyped-def]
    """A pipeline predicting from a DataFrame input, with and without named outputs."""
    request = _pandas_request()
    request.outputs = [RequestOutput(name=o) for o in outputs]
    response = predict_like_plain(make_model(_pandas_pipeline()), request)
    assert response.outputs[0].name == PREDICT_OUTPUT


# Custom estimator classes (your own modules) are not in skops' default trust or the runtime's
# allowlist: list them in parameters.extra.sigstore.trusted_types, and only if you trust their
# code (see docs/adversarial.md). Plain SKLearnModel would import and run them unasked.


def test_python_beside_the_artefact_refuses_the_load(models_root: Path, authority: Authority, loader: LoaderProcess) -> None:
    from runtime.errors import ModelRefused

    folder = models_root / "python-beside"
    folder.mkdir()
    (folder / "joblib.py").write_text("print('imported!')\n")
    path = folder / "model.joblib"
    joblib.dump(_classifier(), path)
    authority.sign_file(path)
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": loader.endpoint}
    settings = ModelSettings(
        name="python-beside", implementation=SigstoreModel, parameters=ModelParameters(uri=str(path), extra={"sigstore": policy})
    )
    with pytest.raises(ModelRefused, match=r"holds Python code \['joblib.py'\]") as exc:
        run(SigstoreModel(settings).load())
    assert exc.value.status_code == 403
