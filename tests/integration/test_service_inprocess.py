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


def test_a_request_refused_for_its_bundle_or_signature_leaves_no_read_behind(
    service: tuple[LoaderService, Path], authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artefact is read beside verification; a refusal must not leave a read running."""
    import threading

    import loader._internal.service as service_module
    from loader.errors import NotFound, VerificationFailed

    svc, root = service
    artefact = put(root, "read-once", b"\x80\x04N.", authority)
    reads: list[threading.Event] = []
    original = service_module._timed_read

    def counted(path: Path, max_bytes: int):  # type: ignore[no-untyped-def]
        reads.append(threading.Event())
        try:
            return original(path, max_bytes)
        finally:
            reads[-1].set()

    monkeypatch.setattr(service_module, "_timed_read", counted)
    signer = (Signer(identity=SIGNER, issuer=authority.issuer),)
    with pytest.raises(NotFound):
        svc.load(LoadRequest(artefact=artefact, bundle="no-such.sigstore.json", signers=signer))
    assert reads == [], "a request refused for its bundle started reading the artefact"
    stranger = (Signer(identity="someone-else@example.com", issuer=authority.issuer),)
    with pytest.raises(VerificationFailed):
        svc.load(LoadRequest(artefact=artefact, signers=stranger))
    assert len(reads) == 1 and reads[0].is_set(), "the refusal came back while the artefact was still being read"


def test_a_kept_artefact_goes_when_released_or_when_its_time_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A load with execution "auto" keeps the verified artefact for `serve`; the runtime that
    loaded the model itself releases it, and an unclaimed one is closed when it expires, with no
    further load needed (the soak saw them stay until the next load)."""
    import os

    import loader._internal.service as service_module
    from loader._internal.memfd import new_memfd, seal

    def kept() -> tuple[object, int]:
        fd = new_memfd("artefact")
        os.write(fd, b"verified bytes")
        sealed = seal(fd)
        return sealed, sealed.fd

    tickets = service_module._Tickets()
    artefact, fd = kept()
    ticket = tickets.put(artefact, object())  # type: ignore[arg-type]
    del artefact
    assert tickets.release(ticket) and not tickets.release(ticket)
    assert tickets.take(ticket) is None
    monkeypatch.setattr(service_module, "TICKET_SECONDS", -1.0)  # born expired
    artefact, fd = kept()
    expired = tickets.put(artefact, object())  # type: ignore[arg-type]
    del artefact
    tickets.sweep()
    assert tickets.take(expired) is None and not tickets._items
