"""Issue 27: the models people ship (passthrough columns, NumPy functions, meta-estimators,
clustering, search objects) load through runtime.SigstoreModel with the default policy, in
process, through a real loader, and answer exactly as the same file loaded by plain joblib
(MLServer's own scikit-learn runtime)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, RequestInput, RequestOutput
from mlserver_sklearn import SKLearnModel

from runtime import SigstoreModel
from tests.model_corpus import COMMON, _data
from tests.support import SIGNER, Authority, LoaderProcess


def _request(name: str, output: str) -> InferenceRequest:
    x = _data(rows=20, seed=1)[0]
    if name.endswith("-frame"):
        columns = {"a": x[:, 0], "b": x[:, 1], "c": x[:, 3]}
        inputs = [RequestInput(name=k, datatype="FP64", shape=[len(v)], data=v.tolist()) for k, v in columns.items()]
        colours = np.where(x[:, 2] > 0, "red", "blue").tolist()
        inputs.append(RequestInput(name="colour", datatype="BYTES", shape=[len(colours)], data=colours, parameters={"content_type": "str"}))
        return InferenceRequest(parameters={"content_type": "pd"}, inputs=inputs, outputs=[RequestOutput(name=output)])
    return InferenceRequest(
        inputs=[RequestInput(name="x", datatype="FP64", shape=list(x.shape), data=x.ravel().tolist())],
        outputs=[RequestOutput(name=output)],
    )


def _outputs(model: Any, request: InferenceRequest) -> list[dict[str, Any]]:
    response = asyncio.run(model.predict(request.model_copy(deep=True)))
    return [o.model_dump() for o in response.outputs]


@pytest.mark.parametrize("name", sorted(COMMON))
def test_common_model_loads_in_process_and_predicts_like_joblib(
    name: str, models_root: Path, authority: Authority, loader: LoaderProcess
) -> None:
    estimator = COMMON[name]()
    folder = models_root / f"common-{name}"
    folder.mkdir()
    path = folder / "model.joblib"
    joblib.dump(estimator, path)
    authority.sign_file(path)
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": loader.endpoint}
    ours = SigstoreModel(ModelSettings(
        name=folder.name, implementation=SigstoreModel, parameters=ModelParameters(uri=str(path), extra={"sigstore": policy}),
    ))
    assert asyncio.run(ours.load())
    assert type(ours._model) is type(estimator)  # the validated model itself, in this process
    plain = SKLearnModel(ModelSettings(name=folder.name, implementation=SKLearnModel, parameters=ModelParameters(uri=str(path))))
    assert asyncio.run(plain.load())
    methods = ["predict"] + [m for m in ("predict_proba",) if hasattr(estimator, m)]
    for method in methods:
        request = _request(name, method)
        assert _outputs(ours, request) == _outputs(plain, request), method
