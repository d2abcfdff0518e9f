"""The loader service over real gRPC: verification gate, confined unpickling, status codes."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import joblib
import pytest
import skops.io
from sklearn import datasets

from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from tests import hostile
from tests.controls import FIRED, TECHNIQUES, Target, listeners, run_control_on_host, wait_for_connections
from tests.support import SIGNER, Authority, LoaderProcess, call, log_records, put, refused, start_loader, stop_process

DIGITS = datasets.load_digits()
DIGITS_X = DIGITS.images.reshape((len(DIGITS.images), -1))


def test_a_good_model_round_trips_and_predicts_like_the_original(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    artefact = put(models_root, "good", digits_svm_bytes, authority)
    header, data = call(loader, artefact, authority)
    original = joblib.load(io.BytesIO(digits_svm_bytes))
    served = skops.io.loads(data, trusted=[])
    assert (served.predict(DIGITS_X) == original.predict(DIGITS_X)).all()
    assert header.facts.identity == SIGNER
    assert header.facts.issuer == authority.issuer
    assert header.facts.trust_root == "local"
    assert header.facts.bundle_media_type.startswith("application/vnd.dev.sigstore.bundle")
    assert header.facts.log_index >= 0 and header.facts.integrated_time > 0
    assert {t.stage for t in header.timings} >= {"read", "verify", "child_unpickle", "child_convert", "result_hash"}
    assert header.untrusted_types == []
    again, _ = call(loader, artefact, authority)
    assert again.cached and not header.cached


def test_the_trace_artefact_is_unpickled_when_signed(loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    """Control for the refusal tests: a signed trace artefact does reach the child."""
    artefact = put(models_root, "trace-signed", hostile.TRACE, authority)
    error = refused(loader, artefact, authority)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert hostile.TRACE_MESSAGE in error.details()
    assert log_records(loader, artefact)[-1]["stage"] == "unpickle"


@pytest.fixture()
def trace_artefact(models_root: Path, authority: Authority, request: pytest.FixtureRequest) -> str:
    """A signed trace artefact; each test mutates it or the request so it must be refused."""
    return put(models_root, f"trace-{request.node.name[:40]}", hostile.TRACE, authority)


def assert_refused_without_unpickling(loader: LoaderProcess, error: grpc.RpcError, artefact: str, code: grpc.StatusCode, words: str, stage: str = "verify") -> None:
    """Refused with `code` for the reason `words`, at `stage` by the loader's JSON log; nothing unpickled."""
    assert error.code() == code, error.details()
    assert words in error.details(), error.details()
    assert hostile.TRACE_MESSAGE not in error.details()
    records = log_records(loader, artefact)
    assert records and records[-1]["verdict"] == "refused", records
    assert records[-1]["code"] == code.name and records[-1]["stage"] == stage, records[-1]


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_a_flipped_byte_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, trace_artefact: str, position: str) -> None:
    path = models_root / trace_artefact
    data = bytearray(path.read_bytes())
    index = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[position]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    error = refused(loader, trace_artefact, authority)
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.PERMISSION_DENIED, "Bundle message digest mismatch")


@pytest.mark.parametrize("change", [lambda d: d[:-1], lambda d: d + b"."])
def test_a_truncated_or_extended_artefact_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, trace_artefact: str, change) -> None:  # type: ignore[no-untyped-def]
    path = models_root / trace_artefact
    path.write_bytes(change(path.read_bytes()))
    error = refused(loader, trace_artefact, authority)
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.PERMISSION_DENIED, "Bundle message digest mismatch")


def test_a_wrong_identity_is_refused_naming_expected_and_actual(loader: LoaderProcess, authority: Authority, trace_artefact: str) -> None:
    error = refused(loader, trace_artefact, authority, identity="mallory@example.com")
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.PERMISSION_DENIED, "signer policy failed")
    assert SIGNER in error.details() and "mallory@example.com" in error.details()


def test_a_wrong_issuer_is_refused(loader: LoaderProcess, authority: Authority, trace_artefact: str) -> None:
    error = refused(loader, trace_artefact, authority, issuer="https://accounts.google.com")
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.PERMISSION_DENIED, "signer policy failed")
    assert "https://accounts.google.com" in error.details()


def test_a_bundle_from_another_trust_root_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, other_authority: Authority) -> None:
    artefact = put(models_root, "trace-other-root", hostile.TRACE, other_authority)
    error = refused(loader, artefact, authority, issuer=other_authority.issuer)
    assert_refused_without_unpickling(loader, error, artefact, grpc.StatusCode.PERMISSION_DENIED, "certificate chain")
    # ...and it does verify when the request picks the root it was issued under.
    with pytest.raises(grpc.RpcError) as ok_root:
        call(loader, artefact, other_authority, trust_root="other")
    assert hostile.TRACE_MESSAGE in ok_root.value.details()


def test_a_missing_bundle_is_not_found(loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    artefact = put(models_root, "trace-unsigned", hostile.TRACE)
    error = refused(loader, artefact, authority)
    assert_refused_without_unpickling(loader, error, artefact, grpc.StatusCode.NOT_FOUND, "model.joblib.sigstore.json", stage="read")


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.9+json"}'])
def test_a_malformed_bundle_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, trace_artefact: str, content: bytes) -> None:
    (models_root / f"{trace_artefact}.sigstore.json").write_bytes(content)
    error = refused(loader, trace_artefact, authority)
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.PERMISSION_DENIED, "bundle is malformed")


def test_a_bundle_for_another_artefact_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, trace_artefact: str) -> None:
    other = put(models_root, "other-artefact", b"another artefact", authority)
    (models_root / f"{trace_artefact}.sigstore.json").write_bytes((models_root / f"{other}.sigstore.json").read_bytes())
    error = refused(loader, trace_artefact, authority)
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.PERMISSION_DENIED, "Bundle message digest mismatch")


@pytest.mark.parametrize(("path", "words"), [("../outside/model.joblib", "contains '..'"), ("/etc/passwd", "outside the models root"), ("escape/model.joblib", "outside the models root")])
def test_paths_escaping_the_models_root_are_invalid(loader: LoaderProcess, models_root: Path, authority: Authority, path: str, words: str) -> None:
    outside = models_root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "model.joblib").write_bytes(hostile.TRACE)
    authority.sign_file(outside / "model.joblib")
    if not (models_root / "escape").exists():
        (models_root / "escape").symlink_to(outside)
    error = refused(loader, path, authority)
    assert_refused_without_unpickling(loader, error, path, grpc.StatusCode.INVALID_ARGUMENT, words, stage="read")


def test_an_empty_policy_is_invalid(loader: LoaderProcess, authority: Authority, trace_artefact: str) -> None:
    request = loader_pb2.VerifyAndLoadRequest(artefact=trace_artefact)
    with grpc.insecure_channel(loader.endpoint) as channel, pytest.raises(grpc.RpcError) as exc:
        next(loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=30))
    assert_refused_without_unpickling(loader, exc.value, trace_artefact, grpc.StatusCode.INVALID_ARGUMENT, "no accepted signers in the policy")


def test_an_unknown_trust_root_is_invalid(loader: LoaderProcess, authority: Authority, trace_artefact: str) -> None:
    error = refused(loader, trace_artefact, authority, trust_root="nope")
    assert_refused_without_unpickling(loader, error, trace_artefact, grpc.StatusCode.INVALID_ARGUMENT, "unknown trust root 'nope'")
    assert "['local', 'other', 'production']" in error.details()


def test_untrusted_types_are_reported_for_the_runtime_to_decide(loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    """The loader reports the types skops does not trust; the serving runtime's allowlist decides."""
    import operator

    from sklearn.preprocessing import FunctionTransformer

    buffer = io.BytesIO()
    joblib.dump(FunctionTransformer(func=operator.neg), buffer)
    artefact = put(models_root, "function-transformer", buffer.getvalue(), authority)
    header, _ = call(loader, artefact, authority)
    assert "_operator.neg" in header.untrusted_types


@pytest.mark.concurrency
def test_concurrent_loads_all_succeed(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    artefacts = [put(models_root, f"concurrent-{i}", digits_svm_bytes + b"\n" * i, authority) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        headers = list(pool.map(lambda a: call(loader, a, authority)[0], artefacts))
    assert len({h.facts.artefact_sha256 for h in headers}) == 4


# A payload that sleeps spends no CPU: only the wall limit ends it, so it gets a loader whose wall
# limit is short (a sleeping payload is slow however idle the host: no verdict depends on load).
WALL_BOUND = {"sleep"}


@pytest.fixture(scope="module")
def wall_loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("wall-loader"), models_root, {"local": authority.trust_config},
        "--child-wall-seconds=6", "--child-cpu-seconds=3", "--child-memory-mb=256",
    )
    yield proc
    stop_process(proc.process)


# Run as root, the host tier's child may read its parent's /proc environ (root passes the
# non-dumpable check); that case is asserted in the container tier, where the loader is not root.
HOST_TECHNIQUES = sorted(set(TECHNIQUES) - {"read-parent-environ"})


@pytest.mark.parametrize("case", HOST_TECHNIQUES)
def test_a_signed_hostile_pickle_is_contained(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path, request: pytest.FixtureRequest, case: str) -> None:
    """Positive control first (the payload fires unconfined), then the confined child refuses it."""
    technique = TECHNIQUES[case]
    # CPU-bound payloads need nothing of their own: the shared loader's CPU limit binds first.
    if case in WALL_BOUND:
        loader = request.getfixturevalue("wall_loader")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with listeners(tmp_path) as (port, unix_socket, accepted):
        target = Target(canary=str(tmp_path / "pwnd"), scratch=str(scratch), port=port, unix_socket=str(unix_socket))
        artefact = put(models_root, f"hostile-{case}", technique.build(target), authority)

        control = run_control_on_host(models_root / artefact, technique, target, cwd=scratch)
        control.connections = wait_for_connections(accepted, technique.effect == "connect")
        assert technique.fired(target, control), f"the payload did not fire unconfined: {control}"
        Path(target.canary).unlink(missing_ok=True)
        for leftover in scratch.iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        accepted.clear()

        error = refused(loader, artefact, authority)
        details = error.details()
        assert error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED), details
        assert any(reason in details for reason in technique.refusal), details
        assert FIRED not in details
        assert not Path(target.canary).exists() and list(scratch.iterdir()) == []
        assert accepted == []
    assert log_records(loader, artefact)[-1]["stage"] == "unpickle"
    assert loader.process.poll() is None, "the loader died"
    good = put(models_root, "good-after-hostile", digits_svm_bytes, authority)
    header, data = call(loader, good, authority)
    assert header.size == len(data) > 0


def test_a_model_signing_bundle_for_a_single_file_is_accepted(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    import subprocess

    from tests.support import PYTHON

    artefact = put(models_root, "model-signing", digits_svm_bytes)
    signature = models_root / "model-signing" / "model.sig"
    subprocess.run(
        [str(Path(PYTHON).with_name("model_signing")), "sign", "sigstore", "--trust_config", str(authority.trust_config),
         "--identity_token", authority.token(), "--signature", str(signature), str(models_root / artefact)],
        check=True, capture_output=True, timeout=120,
    )
    header, data = call(loader, artefact, authority, bundle="model-signing/model.sig")
    assert header.facts.identity == SIGNER and len(data) == header.size
    # The same bundle does not vouch for other bytes.
    (models_root / artefact).write_bytes(digits_svm_bytes + b"\n")
    error = refused(loader, artefact, authority, bundle="model-signing/model.sig")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not name this artefact" in error.details()


def test_a_large_model_streams_through_with_default_limits(tmp_path: Path, authority: Authority) -> None:
    """Hundreds of MB pass (no 4 MB gRPC message limit), with the loader's default limits."""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from tests.support import start_loader, stop_process

    rows = (150 << 20) // (64 * 8)
    x = np.random.default_rng(0).random((rows, 64))
    buffer = io.BytesIO()
    joblib.dump(KNeighborsClassifier(algorithm="brute").fit(x, np.arange(rows) % 3), buffer)
    models = tmp_path / "models"
    artefact = put(models, "large", buffer.getvalue(), authority)
    proc = start_loader(tmp_path, models, {"local": authority.trust_config})
    try:
        header, data = call(proc, artefact, authority)
    finally:
        stop_process(proc.process)
    assert header.size == len(data) > 150 << 20
    assert (skops.io.loads(data, trusted=[])._fit_X[:5] == x[:5]).all()
