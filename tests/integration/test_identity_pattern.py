"""A request's `identity_regexp` cannot freeze the loader (issue 25, item 6).

Patterns are matched with RE2 (linear time, cosign's syntax). `(.*.*.*)*x` against a signed
model's identity never finishes under Python's backtracking `re` (the positive control, in a
subprocess that is killed); through the real loader it gets the right verdict while honest loads
keep succeeding beside it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from loader._internal.policy import Signer
from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from tests.support import PYTHON, SIGNER, Authority, LoaderProcess, digits_svm_dump, put

CATASTROPHIC = "(.*.*.*)*x"  # no identity ends in "x": every split of the identity is tried
CATASTROPHIC_MATCHING = r"(.*.*.*)*\.com"  # the same nesting, matching the signer
CONTROL_BUDGET = 20.0  # seconds; the control's identity needs far longer (about x20 per 2 characters)


@pytest.fixture(scope="module")
def artefact(loader: LoaderProcess, authority: Authority) -> str:
    return put(loader.models_root, "regexp", digits_svm_dump(), authority)


def _call(loader: LoaderProcess, artefact: str, signer: loader_pb2.Signer, timeout: float = 60) -> int:
    """VerifyAndLoad; the size of the skops model handed back."""
    request = loader_pb2.VerifyAndLoadRequest(artefact=artefact, signers=[signer], model_name=artefact)
    with grpc.insecure_channel(loader.endpoint) as channel:
        responses = loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=timeout)
        next(responses)
        return sum(len(r.chunk) for r in responses)


def _pattern(authority: Authority, pattern: str) -> loader_pb2.Signer:
    return loader_pb2.Signer(identity_regexp=pattern, issuer=authority.issuer)


def test_the_catastrophic_pattern_backtracks_without_end_under_python_re() -> None:
    """Positive control: the pattern class the loader used to compile with `re` does not finish."""
    code = f"import re; re.fullmatch({CATASTROPHIC!r}, {SIGNER!r})"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([PYTHON, "-c", code], timeout=CONTROL_BUDGET, capture_output=True)


def test_the_loader_matcher_gives_the_verdict_on_the_same_identity() -> None:
    from loader._internal.policy import identity_pattern

    assert identity_pattern(CATASTROPHIC).fullmatch(SIGNER) is None
    assert identity_pattern(CATASTROPHIC_MATCHING).fullmatch(SIGNER) is not None
    assert identity_pattern(r"model-pipeline@example\.co").fullmatch(SIGNER) is None  # full match, not search


def test_the_catastrophic_pattern_is_refused_and_a_matching_one_loads(loader: LoaderProcess, authority: Authority, artefact: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(loader, artefact, _pattern(authority, CATASTROPHIC))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    assert "matches none of the accepted signers" in str(refused.value.details())
    assert _call(loader, artefact, _pattern(authority, CATASTROPHIC_MATCHING)) > 0


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(model)-pipeline@\1\.com", "RE2"),  # a backreference: needs backtracking
        (r"(?=model).*", "RE2"),  # lookahead
        ("a" * 1025, "at most 1024"),
    ],
)
def test_a_pattern_re2_cannot_take_is_a_bad_request_naming_the_field(
    loader: LoaderProcess, authority: Authority, artefact: str, pattern: str, reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(loader, artefact, _pattern(authority, pattern))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signers[0].identity_regexp" in str(refused.value.details()) and reason in str(refused.value.details())


@pytest.mark.concurrency
def test_honest_loads_keep_succeeding_while_catastrophic_patterns_arrive(
    loader: LoaderProcess, authority: Authority, artefact: str, capsys: pytest.CaptureFixture[str]
) -> None:
    honest_signer = Signer(identity=SIGNER, issuer=authority.issuer)
    honest = loader_pb2.Signer(identity=honest_signer.identity, issuer=honest_signer.issuer)
    attacks_done: list[grpc.StatusCode] = []
    seconds: list[float] = []  # reported, not asserted
    stop = threading.Event()

    def attack() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                _call(loader, artefact, _pattern(authority, CATASTROPHIC), timeout=30)
                attacks_done.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                attacks_done.append(exc.code())  # type: ignore[attr-defined]
            seconds.append(time.monotonic() - started)

    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for thread in attackers:
        thread.start()
    outcomes: list[str] = []
    try:
        for _ in range(10):
            try:
                outcomes.append("ok" if _call(loader, artefact, honest, timeout=120) > 0 else "empty")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)  # type: ignore[attr-defined]
    finally:
        stop.set()
        for thread in attackers:
            thread.join()
    with capsys.disabled():
        print(
            f"\nhonest loads: {outcomes.count('ok')}/{len(outcomes)} succeeded beside {len(attacks_done)} attack "
            f"requests (each answered in {min(seconds):.3f}-{max(seconds):.3f} s)"
        )
    assert outcomes == ["ok"] * len(outcomes)
    assert attacks_done and set(attacks_done) == {grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(autouse=True)
def _no_leftover(loader: LoaderProcess) -> Iterator[None]:
    yield
    assert loader.process.poll() is None, loader.log_text()[-2000:]
