"""`LoaderService` in process: the loader reports types, the runtime alone decides (issue 16, bug 1)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from loader._internal.paths import ModelsRoot
from loader._internal.sandbox import Sandbox
from loader._internal.service import LoaderService, LoadRequest
from loader._internal.verify import Signer, TrustRoots
from runtime.safe_load import load_model
from tests.support import SIGNER, Authority, put


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[tuple[LoaderService, Path]]:
    root = tmp_path_factory.mktemp("models")
    yield LoaderService(ModelsRoot(root), TrustRoots({"local": authority.trust_config}, "local"), Sandbox()), root


def test_a_forest_with_trusted_types_is_not_refused_by_the_loader(
    service: tuple[LoaderService, Path], authority: Authority
) -> None:
    svc, root = service
    x = np.random.default_rng(0).normal(size=(40, 3))
    model = RandomForestClassifier(n_estimators=2, random_state=0).fit(x, x[:, 0] > 0)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    artefact = put(root, "forest", buffer.getvalue(), authority)
    request = LoadRequest(
        artefact=artefact,
        signers=(Signer(identity=SIGNER, issuer=authority.issuer),),
        trusted_types=("numpy.float32",),
    )
    result = svc.load(request)
    assert "sklearn.tree._tree.Tree" in result.converted.untrusted_types
    loaded = load_model(result.converted.skops_bytes, list(request.trusted_types))
    assert (loaded.predict(x) == model.predict(x)).all()
