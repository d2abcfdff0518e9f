"""Tampered bundles and policies: each refused with the right reason, nothing unpickled.

The artefact is always the signed trace pickle, so an unpickling would show in the reply.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from authority._crypto import new_key
from authority.server import AuthorityServer
from authority.state import AuthorityState
from tests import hostile
from tests.support import SIGNER, Authority, LoaderProcess, call, log_records, put, refused


def _flip_b64(value: str, index: int = -5) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _entry(bundle: dict) -> dict:
    return bundle["verificationMaterial"]["tlogEntries"][0]


def _corrupt_checkpoint(bundle: dict) -> None:
    proof = _entry(bundle)["inclusionProof"]
    note, signature_line = proof["checkpoint"]["envelope"].rsplit("\u2014 ", 1)
    name, sig = signature_line.strip().split(" ")
    proof["checkpoint"]["envelope"] = f"{note}\u2014 {name} {_flip_b64(sig)}\n"


def _corrupt_proof_hash(bundle: dict) -> None:
    proof = _entry(bundle)["inclusionProof"]
    assert proof["hashes"], "the session log should be large enough for a non-empty proof"
    proof["hashes"][0] = _flip_b64(proof["hashes"][0], 0)


# sigstore-python's own first message line is the signal for most causes (the loader passes it
# through); each phrase below names one cause. The SET covers the integrated time and the log
# index, so changing either is the same cause as corrupting the SET itself.
SIGNATURE = "Signature is invalid for input"
CHAIN = "failed to build timestamp certificate chain: validation failed: candidates exhausted: signature does not match"
ROOT_HASH = "inclusion proof contains invalid root hash"
CHECKPOINT = "invalid log entry: checkpoint: invalid signature"
SET = "invalid log entry: SET: invalid inclusion promise"
SCT = "failed to verify SCT on signing certificate"
EXPIRED = "cert is not valid at validation time"

MUTATIONS: dict[str, tuple[Callable[[dict], None], str]] = {
    "signature": (lambda b: b["messageSignature"].update(signature=_flip_b64(b["messageSignature"]["signature"])), SIGNATURE),
    "certificate": (lambda b: b["verificationMaterial"]["certificate"].update(rawBytes=_flip_b64(b["verificationMaterial"]["certificate"]["rawBytes"])), CHAIN),
    "inclusion-proof": (_corrupt_proof_hash, ROOT_HASH),
    "checkpoint": (_corrupt_checkpoint, CHECKPOINT),
    "set": (lambda b: _entry(b)["inclusionPromise"].update(signedEntryTimestamp=_flip_b64(_entry(b)["inclusionPromise"]["signedEntryTimestamp"])), SET),
    "integrated-time": (lambda b: _entry(b).update(integratedTime=str(int(_entry(b)["integratedTime"]) + 1)), SET),
    "log-index": (lambda b: _entry(b).update(logIndex=str(int(_entry(b)["logIndex"]) + 1)), SET),
    "media-type": (lambda b: b.update(mediaType="application/vnd.dev.sigstore.bundle.v0.9+json"), "bundle is malformed: failed to load bundle"),
    "no-tlog-entries": (lambda b: b["verificationMaterial"].update(tlogEntries=[]), "bundle is malformed: expected exactly one log entry in bundle"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_corrupted_bundle_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, mutation: str) -> None:
    # Pad the log so inclusion proofs have hashes.
    for _ in range(3):
        authority.sign_bytes(b"padding")
    artefact = put(models_root, f"tamper-{mutation}", hostile.TRACE, authority)
    bundle_path = models_root / f"{artefact}.sigstore.json"
    bundle = json.loads(bundle_path.read_text())
    change, words = MUTATIONS[mutation]
    change(bundle)
    bundle_path.write_text(json.dumps(bundle))
    error = refused(loader, artefact, authority)
    assert_refused_at(loader, error, artefact, grpc.StatusCode.PERMISSION_DENIED, words, "verify")


def assert_refused_at(loader: LoaderProcess, error: grpc.RpcError, artefact: str, code: grpc.StatusCode, words: str, stage: str) -> None:
    """Refused with `code`, for the reason `words` names, at `stage` (from the loader's JSON log);
    nothing unpickled. Each cause has its own phrase, so one cause cannot pass for another."""
    assert error.code() == code, error.details()
    assert words in error.details(), error.details()
    assert hostile.TRACE_MESSAGE not in error.details()
    record = log_records(loader, artefact)[-1]
    assert record["verdict"] == "refused" and record["code"] == code.name, record
    assert record["stage"] == stage, record


def test_a_huge_bundle_is_refused_by_size(loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    artefact = put(models_root, "tamper-huge-bundle", hostile.TRACE, authority)
    bundle_path = models_root / f"{artefact}.sigstore.json"
    bundle = json.loads(bundle_path.read_text())
    bundle["padding"] = "x" * (2 << 20)
    bundle_path.write_text(json.dumps(bundle))
    error = refused(loader, artefact, authority)
    assert_refused_at(loader, error, artefact, grpc.StatusCode.RESOURCE_EXHAUSTED, "the limit is 1048576", "read")


@pytest.fixture()
def rogue(authority: Authority, tmp_path: Path) -> Iterator[Callable[..., Authority]]:
    """Copies of the session authority with one key swapped (their own trust files say so)."""
    servers: list[AuthorityServer] = []

    def make(**keys: object) -> Authority:
        directory = tmp_path / f"rogue-{len(servers)}"
        shutil.copytree(authority.state.directory, directory)
        state = dataclasses.replace(AuthorityState.load(directory), **keys)
        server = AuthorityServer(state)
        server.start_background()
        servers.append(server)
        return Authority(state, server)

    yield make
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(("key", "words"), [("ct_key", SCT), ("rekor_key", CHECKPOINT), ("intermediate_key", CHAIN)])
def test_a_component_signed_by_an_unknown_key_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, rogue, key: str, words: str) -> None:  # type: ignore[no-untyped-def]
    signer = rogue(**{key: new_key()})
    artefact = put(models_root, f"rogue-{key}", hostile.TRACE, signer)
    error = refused(loader, artefact, authority)
    assert_refused_at(loader, error, artefact, grpc.StatusCode.PERMISSION_DENIED, words, "verify")


def test_a_certificate_expired_at_integrated_time_is_refused(loader: LoaderProcess, models_root: Path, authority: Authority, rogue) -> None:  # type: ignore[no-untyped-def]
    late = rogue()
    late.server.log.clock_offset = 3600  # logged an hour later: the 10-minute certificate has expired
    artefact = put(models_root, "expired-at-integration", hostile.TRACE, late)
    error = refused(loader, artefact, authority)
    assert_refused_at(loader, error, artefact, grpc.StatusCode.PERMISSION_DENIED, EXPIRED, "verify")


@pytest.mark.concurrency
def test_an_artefact_replaced_during_loads_never_loads_other_bytes(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    """Swap, truncate and delete the artefact while loads run: each load gets the signed bytes or a refusal."""
    artefact = put(models_root, "racing", digits_svm_bytes, authority)
    path = models_root / artefact
    variants = [digits_svm_bytes, hostile.TRACE, digits_svm_bytes[: len(digits_svm_bytes) // 2], None]
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            variant = variants[i % len(variants)]
            tmp = path.with_suffix(".tmp")
            if variant is None:
                path.unlink(missing_ok=True)
            else:
                tmp.write_bytes(variant)
                tmp.replace(path)
            i += 1

    signed = hashlib.sha256(digits_svm_bytes).hexdigest()
    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    outcomes: dict[str, int] = {}
    try:
        for _ in range(40):
            try:
                header, data = call(loader, artefact, authority)
                assert header.facts.identity == SIGNER
                assert header.facts.artefact_sha256 == signed, "a load returned bytes other than the signed ones"
                assert len(data) == header.size > 0
                outcomes["loaded"] = outcomes.get("loaded", 0) + 1
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), exc.details()
                assert hostile.TRACE_MESSAGE not in exc.details()
                outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
    finally:
        stop.set()
        thread.join()
    # Which outcomes the free-running churn produces depends on the scheduler (a busy host gave
    # only refusals in 40 tries): only the invariant above is asserted here. Each interleaving
    # is driven deterministically in test_an_artefact_changed_between_open_and_read below.
    assert sum(outcomes.values()) == 40
    print(f"free-running churn: {outcomes}")


# What happens to the artefact after the loader opened it and before it copies it; each step
# runs at exactly that point (the copy is hooked), and the expected outcome follows from it.
def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _overwrite_in_place(path: Path, data: bytes) -> None:
    with path.open("r+b") as f:
        f.write(data)
        f.truncate()


def _same_size_hostile(signed: bytes) -> bytes:
    # The trace pickle padded to the signed size: pickle stops at its STOP opcode, so the bytes
    # would unpickle (and raise the trace) if they were ever handed to the child.
    assert len(hostile.TRACE) < len(signed)
    return hostile.TRACE + b"\0" * (len(signed) - len(hostile.TRACE))


INTERLEAVINGS: dict[str, tuple[Callable[[Path, bytes], None], str]] = {
    # The loader reads the inode it opened: a new file under the name changes nothing.
    "replaced by rename": (lambda path, signed: _replace(path, hostile.TRACE), "loaded"),
    "deleted": (lambda path, signed: path.unlink(), "loaded"),
    # The opened inode itself changes: the bytes read are not the signed ones, or not all of them.
    "overwritten in place, same size": (lambda path, signed: _overwrite_in_place(path, _same_size_hostile(signed)), "VerificationFailed"),
    "truncated in place": (lambda path, signed: _overwrite_in_place(path, signed[: len(signed) // 2]), "BadRequest"),
    "grown in place": (lambda path, signed: _overwrite_in_place(path, signed + b"\0"), "BadRequest"),
}


@pytest.mark.concurrency
@pytest.mark.parametrize("change", sorted(INTERLEAVINGS))
def test_an_artefact_changed_between_open_and_read(
    change: str, tmp_path: Path, authority: Authority, digits_svm_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artefact changes at one known point (opened, not yet read): the load gets exactly the
    signed bytes or a refusal that unpickled nothing, whatever the scheduler does."""
    import loader._internal.paths as paths
    from loader._internal.sandbox import Sandbox
    from loader._internal.service import LoaderService, LoadRequest
    from loader._internal.verify import Signer, TrustRoots
    from loader.errors import LoaderError

    action, expected = INTERLEAVINGS[change]
    root = tmp_path / "models"
    artefact = put(root, "racing", digits_svm_bytes, authority)
    path = root / artefact
    original = paths.copy_from
    fired: list[str] = []

    def copy_after_the_change(source: int, size: int, name: str) -> object:
        if name == "artefact" and not fired:
            action(path, digits_svm_bytes)
            fired.append(change)
        return original(source, size, name)

    monkeypatch.setattr(paths, "copy_from", copy_after_the_change)
    sandbox = Sandbox()
    service = LoaderService(paths.ModelsRoot(root), TrustRoots({"local": authority.trust_config}, "local"), sandbox)
    request = LoadRequest(artefact=artefact, signers=(Signer(identity=SIGNER, issuer=authority.issuer),))
    try:
        try:
            result = service.load(request)
            outcome = "loaded"
            assert result.verified.artefact_sha256 == hashlib.sha256(digits_svm_bytes).hexdigest()
            assert result.converted.skops_bytes
        except LoaderError as exc:
            outcome = type(exc).__name__
            assert hostile.TRACE_MESSAGE not in str(exc)
    finally:
        sandbox.close()
    assert fired == [change], "the hook did not run between open and read"
    assert outcome == expected
