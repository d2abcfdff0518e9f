"""Issue 26's model zoo (tests/model_zoo.py): every model, signed with the local authority and
loaded through runtime.SigstoreModel under the DEFAULT policy (execution "auto") from a real
loader started with --user-code, answers MLServer's InferenceRequests (NumPy tensors, DataFrames
of mixed dtypes, strings) exactly as the same joblib file under MLServer's own SKLearnModel;
`predict`, and `predict_proba` where the model has it. The table says which path each took."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest
from mlserver_sklearn import SKLearnModel

from runtime import SigstoreModel
from tests.model_zoo import KINDS, USER_CODE, ZooModel, write, zoo
from tests.support import SIGNER, Authority, LoaderProcess, start_loader, stop_process

CONCURRENT_LOADS = 3
ZOO = zoo()


@dataclass
class Outcome:
    kind: str
    execution: str = ""
    reason: str = ""
    metadata_execution: str = ""
    methods: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    str_mismatches: list[str] = field(default_factory=list)  # text sent with content_type "str"
    error: str = ""


def request_for(x: np.ndarray | pd.DataFrame, output: str, as_str: bool = False) -> InferenceRequest:
    """What a client sends: a tensor, a column of strings (BYTES, decoded by NumPy's codec, or
    with `as_str` by the str codec, to a list), or a DataFrame column by column."""
    wanted = [{"name": output}]
    if isinstance(x, pd.DataFrame):
        inputs = []
        for column in x.columns:
            values = x[column].to_numpy()
            datatype = {"f": "FP64", "i": "INT64", "b": "BOOL"}.get(values.dtype.kind, "BYTES")
            spec: dict[str, Any] = {"name": column, "datatype": datatype, "shape": [len(values)], "data": values.tolist()}
            if datatype == "BYTES":
                spec["parameters"] = {"content_type": "str"}
            inputs.append(spec)
        return InferenceRequest.model_validate({"parameters": {"content_type": "pd"}, "inputs": inputs, "outputs": wanted})
    if x.dtype.kind == "U":
        text: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [len(x)], "data": x.tolist()}
        if as_str:
            text["parameters"] = {"content_type": "str"}
        return InferenceRequest.model_validate({"inputs": [text], "outputs": wanted})
    tensor = {"name": "x", "datatype": "FP64", "shape": list(x.shape), "data": x.ravel().tolist()}
    return InferenceRequest.model_validate({"inputs": [tensor], "outputs": wanted})


def _settings(implementation: type, path: Path, extra: dict[str, Any]) -> ModelSettings:
    return ModelSettings(name=path.parent.name, implementation=implementation, parameters=ModelParameters(uri=str(path), extra=extra))


async def _serve_and_compare(name: str, model: ZooModel, path: Path, endpoint: str, issuer: str) -> Outcome:
    outcome = Outcome(model.kind)
    policy = {"signers": [{"identity": SIGNER, "issuer": issuer}], "endpoint": endpoint}  # no "execution": the default
    ours = SigstoreModel(_settings(SigstoreModel, path, {"sigstore": policy}))
    try:
        await ours.load()
    except Exception as exc:  # noqa: BLE001 - any failure is one model's verdict, reported with its words
        outcome.error = f"load: {type(exc).__name__}: {exc}"
        return outcome
    try:
        outcome.execution, outcome.reason = ours.execution, ours.execution_reason
        parameters = (await ours.metadata()).parameters
        outcome.metadata_execution = getattr(parameters, "sigstore_execution", "")
        plain = SKLearnModel(_settings(SKLearnModel, path, {}))
        await plain.load()
        outcome.methods = ["predict"] + [m for m in ("predict_proba",) if hasattr(model.estimator, m)]
        text = isinstance(model.inputs, np.ndarray) and model.inputs.dtype.kind == "U"
        for method in outcome.methods:
            for as_str in (False, True) if text else (False,):
                found = outcome.str_mismatches if as_str else outcome.mismatches
                request = request_for(model.inputs, method, as_str)
                try:
                    got = [o.model_dump() for o in (await ours.predict(request.model_copy(deep=True))).outputs]
                except Exception as exc:  # noqa: BLE001 - as above
                    found.append(f"{method}: {type(exc).__name__}: {exc}")
                    continue
                expected = [o.model_dump() for o in (await plain.predict(request.model_copy(deep=True))).outputs]
                if got != expected:
                    found.append(f"{method}: {got} != {expected}")
    finally:
        await ours.unload()
    return outcome


@pytest.fixture(scope="module")
def zoo_loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("zoo-loader"), models_root, {"local": authority.trust_config},
        f"--user-code={USER_CODE}", f"--max-concurrent-loads={CONCURRENT_LOADS}",
    )
    yield proc
    stop_process(proc.process)


@pytest.fixture(scope="module")
def outcomes(zoo_loader: LoaderProcess, models_root: Path, authority: Authority) -> dict[str, Outcome]:
    """Every zoo model written, signed, served and compared, a few at a time."""
    paths = write(ZOO, models_root, authority)

    async def all_of_them() -> dict[str, Outcome]:
        gate = asyncio.Semaphore(CONCURRENT_LOADS)

        async def one(name: str) -> Outcome:
            async with gate:
                return await _serve_and_compare(name, ZOO[name], paths[name], zoo_loader.endpoint, authority.issuer)

        done = await asyncio.gather(*(one(name) for name in ZOO))
        return dict(zip(ZOO, done, strict=True))

    return asyncio.run(all_of_them())


def test_the_zoo_covers_every_kind_with_at_least_fifty_models(outcomes: dict[str, Outcome], capsys: pytest.CaptureFixture[str]) -> None:
    width = max(map(len, outcomes))
    lines = [f"{'model':<{width}}  {'kind':<18}  {'path':<7}  reason"]
    for name, o in sorted(outcomes.items(), key=lambda item: (item[1].kind, item[0])):
        lines.append(f"{name:<{width}}  {o.kind:<18}  {o.execution or 'FAILED':<7}  {o.error or o.reason}"[:220])
    paths = {p: sum(o.execution == p for o in outcomes.values()) for p in ("server", "sandbox")}
    lines.append(f"{len(outcomes)} models: {paths['server']} in the server, {paths['sandbox']} in the sandbox")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert len(outcomes) >= 50
    assert {o.kind for o in outcomes.values()} == set(KINDS)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_serves_under_the_default_policy_like_plain_joblib(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert not outcome.error, outcome.error
    assert outcome.execution in ("server", "sandbox") and outcome.metadata_execution == outcome.execution, outcome
    assert not outcome.mismatches, outcome.mismatches


TEXT = sorted(name for name, model in ZOO.items() if isinstance(model.inputs, np.ndarray) and model.inputs.dtype.kind == "U")
# A str-codec request decodes to a list, which SKLearnModel hands to the model as is; the
# sandbox's data path sends it as an array of texts.
@pytest.mark.parametrize("name", TEXT)
def test_text_sent_with_the_str_codec_serves_like_plain_joblib(outcomes: dict[str, Outcome], name: str) -> None:
    assert not outcomes[name].str_mismatches, outcomes[name].str_mismatches
