"""Models served in the sandbox by the loader image under compose's hardening (a non-root user,
no network, no capabilities, read-only root): identical predictions, and predict-time payloads
contained there too."""

from __future__ import annotations

import asyncio
import io

import joblib
import numpy as np
import pandas as pd
import pytest
from docker.types import Mount
from mlserver.settings import ModelParameters, ModelSettings
from mlserver_sklearn import SKLearnModel
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

import docker
from runtime import SigstoreModel
from runtime.errors import PredictFailed
from tests import hostile_predict
from tests.container.conftest import RUNTIMES, LoaderContainer
from tests.integration.test_sandboxed import request_for
from tests.support import SIGNER, Authority

RNG = np.random.default_rng(3)
X = np.abs(RNG.normal(size=(50, 4)))
Y = (X[:, 0] > X[:, 1]).astype(int)
FRAME = pd.DataFrame({"a": RNG.normal(size=50), "op": RNG.choice(["+", "-"], 50)})
LABELS = np.where(FRAME["a"] > 0, "high", "low")
PASSTHROUGH = ColumnTransformer([("cat", OneHotEncoder(), ["op"])], remainder="passthrough")
CASES = {
    "log1p": (make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(X, Y), X[:6]),
    "passthrough-frame": (make_pipeline(PASSTHROUGH, LogisticRegression()).fit(FRAME, LABELS), FRAME[:6]),
    "knn": (KNeighborsClassifier(3).fit(X, Y), X[:6]),
    "forest-n-jobs": (RandomForestClassifier(n_estimators=4, n_jobs=-1, random_state=0).fit(X, Y), X[:6]),
}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def _relative_paths(monkeypatch: pytest.MonkeyPatch, loader_container: LoaderContainer) -> None:
    monkeypatch.setenv("MLSERVER_SIGSTORE_ARTEFACTS_ROOT", str(loader_container.models))


def served(lc: LoaderContainer, name: str, data: bytes, authority: Authority) -> SigstoreModel:
    path = lc.models / lc.put(name, data, authority)
    policy = {"signers": [{"identity": SIGNER, "issuer": authority.issuer}], "endpoint": lc.endpoint, "execution": "sandbox"}
    model = SigstoreModel(ModelSettings(name=name, implementation=SigstoreModel, parameters=ModelParameters(uri=str(path), extra={"sigstore": policy})))
    assert run(model.load())
    return model


# Under gVisor too: there the kernel passes no descriptor to MLServer, so requests go over gRPC.
@pytest.mark.parametrize("loader_container", RUNTIMES, indirect=True)
@pytest.mark.parametrize("case", sorted(CASES))
def test_served_in_the_container_predicts_like_plain_joblib(loader_container: LoaderContainer, authority: Authority, case: str) -> None:
    estimator, x = CASES[case]
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    model = served(loader_container, f"served-{case}", buffer.getvalue(), authority)
    plain = SKLearnModel(ModelSettings(name=case, implementation=SKLearnModel, parameters=ModelParameters(uri=str(loader_container.models / f"served-{case}" / "model.joblib"))))
    assert run(plain.load())
    for outputs in (["predict"], ["predict_proba"]):
        ours = run(model.predict(request_for(x, outputs)))
        theirs = run(plain.predict(request_for(x, outputs)))
        assert [o.model_dump() for o in ours.outputs] == [o.model_dump() for o in theirs.outputs]
    assert run(model.unload())


@pytest.mark.parametrize("loader_container", RUNTIMES, indirect=True)
@pytest.mark.parametrize("case", ["fork", "network", "sigsegv", "signal-parent"])
def test_a_predict_time_payload_is_contained_in_the_container(loader_container: LoaderContainer, authority: Authority, case: str) -> None:
    """The payloads' unconfined controls are in tests/integration/test_sandboxed.py (host tier)."""
    technique = hostile_predict.TECHNIQUES[case]
    target = hostile_predict.Target(canary="/tmp/pwnd", secret="/etc/hostname", port=1, bystander_pid=1)
    model = served(loader_container, f"hostile-{case}", hostile_predict.acting_at_predict(technique.body(target)), authority)
    with pytest.raises(PredictFailed) as failed:
        run(model.predict(request_for(np.ones((hostile_predict.ROWS, 3)), ["predict"])))
    assert failed.value.status_code in technique.status and any(r in str(failed.value) for r in technique.refusal), failed.value
    good = served(loader_container, "good-beside", _good(), authority)
    assert run(good.predict(request_for(X[:3], ["predict"]))).outputs[0].shape == [3, 1]
    run(good.unload())
    run(model.unload())


def _good() -> bytes:
    buffer = io.BytesIO()
    joblib.dump(LogisticRegression().fit(X, Y), buffer)
    return buffer.getvalue()


BOOSTERS = ["xgb-classifier", "xgb-classifier-n-jobs", "lgbm-classifier", "lgbm-regressor-n-jobs", "customers-frame-lgbm"]


@pytest.mark.parametrize("name", BOOSTERS)
def test_a_booster_serves_in_the_container_like_plain_joblib(loader_container: LoaderContainer, authority: Authority, name: str) -> None:
    """XGBoost and LightGBM from the image's `boosters` extra, under the default policy: their
    shared libraries and OpenMP runtime load under Landlock, and a model fitted with n_jobs=4
    predicts on the one core a worker has (its user may start no thread)."""
    from tests.integration.test_zoo import _serve_and_compare
    from tests.model_zoo import zoo

    model = zoo(only=[name])[name]
    buffer = io.BytesIO()
    joblib.dump(model.estimator, buffer)
    path = loader_container.models / loader_container.put(f"zoo-{name}", buffer.getvalue(), authority)
    outcome = run(_serve_and_compare(name, model, path, loader_container.endpoint, authority.issuer))
    print(f"{name}: {outcome}")
    assert not outcome.error and outcome.execution == "sandbox", outcome
    assert not outcome.mismatches, outcome.mismatches


# --- User code in the container (`--user-code`) ----------------------------------------------
USER_CODE_MOUNT = "/sandbox/user-code"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_user_code_mounted_in_the_view_serves_under_either_runtime(
    docker_client: docker.DockerClient, authority: Authority, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's class, mounted read-only under /sandbox and given with --user-code: importable
    by the worker under runc (Landlock grants the folder) and under gVisor (inside the chroot view);
    the model predicts as the class does in this process."""
    from acme_models import NearestCentroidScorer

    from tests.container.conftest import running_loader
    from tests.integration.test_sandboxed import USER_CODE

    estimator = NearestCentroidScorer(0.5).fit(X, Y)
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    mount = Mount(USER_CODE_MOUNT, str(USER_CODE), type="bind", read_only=True)
    with running_loader(docker_client, authority, f"--user-code={USER_CODE_MOUNT}", runtime=runtime, mounts=(mount,)) as lc:
        monkeypatch.setenv("MLSERVER_SIGSTORE_ARTEFACTS_ROOT", str(lc.models))
        model = served(lc, "user-class", buffer.getvalue(), authority)
        answer = run(model.predict(request_for(X[:5], ["predict"])))
        assert answer.outputs[0].data.root == estimator.predict(X[:5]).tolist()  # type: ignore[union-attr]
        assert run(model.unload())


@pytest.mark.parametrize("loader_container", ["runsc"], indirect=True)
def test_user_code_outside_the_view_is_refused_at_start_under_gvisor(loader_container: LoaderContainer) -> None:
    """Under gVisor a --user-code folder outside /sandbox could not be read by the workers: the
    loader refuses to start with it, naming where to mount it (it never starts serving)."""
    result = loader_container.container.exec_run(
        # (`timeout`: a loader that accepted the folder would serve until stopped)
        ["timeout", "120", "python", "-m", "loader", "serve", "--socket=/tmp/other.sock", "--models-root=/models", "--user-code=/srv"]
    )
    output = result.output.decode(errors="replace")
    assert result.exit_code != 0, output
    assert "--user-code /srv is outside the children's view" in output and "mount it under /sandbox" in output, output


@pytest.mark.parametrize("loader_container", ["runsc"], indirect=True)
def test_a_models_root_inside_the_view_is_refused_at_start_under_gvisor(loader_container: LoaderContainer) -> None:
    """Every confined process reads /sandbox under gVisor: models (or trust configs, or the socket
    folder) mounted there would be readable by any signed model, so the loader will not start."""
    result = loader_container.container.exec_run(
        ["timeout", "120", "python", "-m", "loader", "serve", "--socket=/tmp/other.sock", "--models-root=/sandbox/opt"]
    )
    output = result.output.decode(errors="replace")
    assert result.exit_code == 2, output
    assert "--models-root /sandbox/opt is inside the children's view (/sandbox)" in output, output
