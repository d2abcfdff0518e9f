"""Offline verification of an in-memory artefact (or a model directory) against a signer policy.

Sigstore bundles (`sigstore sign`, keyless) and OpenSSF model-signing bundles (`model_signing
sign`) are verified here. A model-signing bundle's signature is verified by its signing method
(`methods/`, one module per method, picked from the bundle by `methods.bundle_shape`); the
signer kinds are the contract's (`loader/signers.py`); the manifest is compared with the files
in signed_manifest.py, and OMS rules are in oms.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import sigstore
from model_signing import manifest as ms_manifest
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError as SigstoreVerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import AnyOf
from sigstore_models.common.v1 import HashAlgorithm

from loader._internal import oms, signed_manifest
from loader._internal.keys import SigningKeys
from loader._internal.methods import SignedBy, SigningMethod, accepted, bundle_shape, keyless
from loader._internal.methods.base import first_line as _first_line
from loader._internal.policy import certificate_facts, keyless_policy
from loader.errors import BadRequest, VerificationFailed
from loader.signers import Signer

__all__ = [
    "PRODUCTION", "SignedBundle", "Signer", "TrustConfigError", "TrustRoots", "Verified", "verify_artefact", "verify_bundle",
    "verify_directory",
]

PRODUCTION = "production"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Verified:
    """What a successful verification established (the fields of loader.v1.VerificationFacts)."""

    artefact_sha256: str
    bundle_sha256: str
    identity: str
    issuer: str
    log_index: int
    integrated_time: int
    bundle_media_type: str
    trust_root: str
    signing_method: str = "sigstore"
    model_file: str = ""
    verified_files: tuple[str, ...] = ()


class TrustConfigError(ValueError):
    """A configured trust root cannot be used: the file is missing, unreadable or not a root."""


def _load_trusted_root(name: str, path: Path) -> TrustedRoot:
    try:
        text = path.read_text()
        media_type = str(json.loads(text).get("mediaType", ""))
        if "clienttrustconfig" in media_type:
            return ClientTrustConfig.from_json(text).trusted_root
        return TrustedRoot.from_file(str(path))
    except FileNotFoundError:
        raise TrustConfigError(f"trust root {name!r}: {path} does not exist") from None
    except OSError as exc:
        raise TrustConfigError(f"trust root {name!r}: cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - JSON, pydantic and sigstore errors alike mean "not a root"
        raise TrustConfigError(
            f"trust root {name!r}: {path} is not a Sigstore trusted root or client trust config "
            f"({_first_line(exc)})"
        ) from None


def production_root_file() -> Path:
    """The production trusted root pinned inside the installed sigstore package."""
    return (
        Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev" / "trusted_root.json"
    )


class TrustRoots:
    """Operator-chosen trusted roots by name; requests may only pick among these."""

    def __init__(self, files: dict[str, Path], default: str, keys: SigningKeys | None = None) -> None:
        self._verifiers = {name: Verifier(trusted_root=_load_trusted_root(name, p)) for name, p in files.items()}
        if default not in self._verifiers:
            raise TrustConfigError(f"default trust root {default!r} is not one of {sorted(self._verifiers)}")
        self.default = default
        # Public keys and CAs for model-signing bundles signed without Sigstore, also by name.
        self.keys = keys or SigningKeys()

    @property
    def names(self) -> list[str]:
        return sorted(self._verifiers)

    def verifier(self, name: str) -> tuple[str, Verifier]:
        chosen = name or self.default
        try:
            return chosen, self._verifiers[chosen]
        except KeyError:
            raise BadRequest(
                f"unknown trust root {chosen!r}; this loader is configured with {self.names}"
            ) from None




def verify_artefact(
    artefact: bytes | bytearray,
    bundle_json: bytes | bytearray,
    signers: list[Signer],
    roots: TrustRoots,
    trust_root: str = "",
    digest: str | None = None,
    *,
    directory: Path | None = None,
    model_file: str = "",
    ignore_paths: tuple[str, ...] | list[str] = (),
    max_bytes: int = 4 << 30,
    signature: Path | None = None,
) -> Verified:
    """Verify `artefact` (the exact bytes that will be deserialized) against its bundle.

    A Sigstore bundle must sign these bytes. A model-signing bundle must carry a manifest that
    names these bytes, or, when it covers a directory, the whole of `directory` (holding the
    artefact as `model_file`), minus `ignore_paths`. Then one of `signers` must match. Raises
    VerificationFailed naming the failed check. `digest` is the artefact's sha256 (hex) if the
    caller already has it.
    """
    signed = verify_bundle(bundle_json, signers, roots, trust_root)
    return signed.bind(
        artefact, digest or hashlib.sha256(artefact).hexdigest(),
        directory=directory, model_file=model_file, ignore_paths=ignore_paths, max_bytes=max_bytes, signature=signature,
    )


class SignedBundle:
    """A bundle whose signature and signer are verified; `bind` checks that it signs the
    artefact's bytes. Together they are `verify_artefact`; apart, the bundle is verified while
    the artefact is still being read."""

    def __init__(
        self, bind: Callable[[bytes | bytearray, str, Path | None, str, tuple[str, ...] | list[str], int, Path | None], Verified]
    ) -> None:
        self._bind = bind

    def bind(
        self,
        artefact: bytes | bytearray,
        digest: str,
        *,
        directory: Path | None = None,
        model_file: str = "",
        ignore_paths: tuple[str, ...] | list[str] = (),
        max_bytes: int = 4 << 30,
        signature: Path | None = None,
    ) -> Verified:
        """The verification facts, once `artefact` (whose sha256 hex is `digest`) is the one signed;
        raises VerificationFailed otherwise. `signature`: the bundle's file, skipped in `directory`."""
        return self._bind(artefact, digest, directory, model_file, ignore_paths, max_bytes, signature)

    def bind_directory(
        self, directory: Path, ignore_paths: tuple[str, ...] | list[str] = (), max_bytes: int = 4 << 30,
        signature: Path | None = None,
    ) -> Verified:
        """The verification facts, once every file of `directory` is the one signed (a model-signing
        bundle over a directory, whatever its files are); raises VerificationFailed otherwise."""
        return self._bind(b"", "", directory, "", ignore_paths, max_bytes, signature)


def verify_directory(
    bundle_json: bytes | bytearray, signers: list[Signer], roots: TrustRoots, directory: Path, *,
    trust_root: str = "", ignore_paths: tuple[str, ...] | list[str] = (), max_bytes: int = 4 << 30,
    signature: Path | None = None,
) -> Verified:
    """Verify a model-signing directory as OMS v1.0 says, whatever files it holds (no model file
    needed: nothing is loaded)."""
    return verify_bundle(bundle_json, signers, roots, trust_root).bind_directory(directory, ignore_paths, max_bytes, signature)


def verify_bundle(
    bundle_json: bytes | bytearray, signers: list[Signer], roots: TrustRoots, trust_root: str = ""
) -> SignedBundle:
    """Verify everything about `bundle_json` that does not depend on the artefact's bytes (see
    `verify_artefact`); raises VerificationFailed naming the failed check."""
    if not signers:
        raise BadRequest("no accepted signers in the policy; name at least one signer")
    for index, signer in enumerate(signers):
        signer.check(f"signers[{index}]")
    bundle_json = bytes(bundle_json)
    shape = bundle_shape(bundle_json)
    bundle_sha256 = hashlib.sha256(bundle_json).hexdigest()
    if not shape.model_signing:
        # `sigstore sign` and `sigstore attest` bundles: Sigstore keyless, whatever their material.
        return _verify_sigstore_bundle(bundle_json, bundle_sha256, signers, roots, trust_root, shape.media_type)
    oms.check_bundle(bundle_json)
    signed, by = _verify_manifest_signature(bundle_json, shape.method, signers, roots, trust_root)

    def bind(
        artefact: bytes | bytearray, digest: str, directory: Path | None, model_file: str,
        ignore_paths: tuple[str, ...] | list[str], max_bytes: int, signature: Path | None,
    ) -> Verified:
        name = model_file or "artefact"
        if not model_file and directory is not None:
            if signed_manifest.covers_one_file(signed):
                raise VerificationFailed("the signature covers one file, not a directory: give that file")
            files = signed_manifest.check_directory(
                signed, directory, None, b"", list(ignore_paths), max_bytes, signature=signature
            )
        elif signed_manifest.covers_one_file(signed):
            signed_manifest.check_file(signed, artefact, name, digest)
            files = [model_file or signed_manifest.SINGLE_FILE]
        elif directory is None:
            covered = signed_manifest.signed_files(signed)
            raise VerificationFailed(
                f"the signature covers a model directory ({len(covered)} files: {', '.join(covered[:5])}"
                f"{', ...' if len(covered) > 5 else ''}), but only one file was given: verify the directory"
            )
        else:
            files = signed_manifest.check_directory(
                signed, directory, PurePosixPath(model_file), artefact, list(ignore_paths), max_bytes, digest, signature
            )
        return Verified(
            artefact_sha256=digest,
            bundle_sha256=bundle_sha256,
            identity=by.identity,
            issuer=by.issuer,
            log_index=by.log_index,
            integrated_time=by.integrated_time,
            bundle_media_type=shape.media_type,
            trust_root=by.trust,
            signing_method=by.method,
            model_file=model_file,
            verified_files=tuple(files),
        )

    return SignedBundle(bind)


def _verify_manifest_signature(
    bundle_json: bytes, method: SigningMethod, signers: list[Signer], roots: TrustRoots, trust_root: str
) -> tuple[ms_manifest.Manifest, SignedBy]:
    """The signed manifest of a model-signing bundle, once a signer of the policy vouches for it."""
    candidates = accepted(signers, method)
    try:
        signature = method.read_signature(bundle_json)
    except (ValueError, KeyError, TypeError, AttributeError, SigstoreError) as exc:
        raise VerificationFailed(f"bundle is malformed: {_first_line(exc)}") from None
    return method.verify(signature, candidates, roots, trust_root)


def _verify_sigstore_bundle(
    bundle_json: bytes,
    bundle_sha256: str,
    signers: list[Signer],
    roots: TrustRoots,
    trust_root: str,
    media_type: str,
) -> SignedBundle:
    """`sigstore sign` (hashedrekord) or `sigstore attest` (in-toto statement) over one file."""
    keyless_signers = accepted(signers, keyless.METHOD)
    root_name, verifier = roots.verifier(trust_root)
    try:
        bundle = Bundle.from_json(bundle_json)
    except (ValueError, SigstoreError, AttributeError) as exc:
        raise VerificationFailed(f"bundle is malformed: {_first_line(exc)}") from None
    policy = AnyOf([keyless_policy(signer) for signer in keyless_signers])

    def checked(check: Callable[[], _T]) -> _T:
        try:
            return check()
        except SigstoreError as exc:
            raise keyless.failure(exc, bundle.signing_certificate, keyless_signers, root_name) from None

    def artefact_hashed(digest: str) -> Hashed:
        return Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(digest))

    # Checked without the artefact: the DSSE envelope, or a hashedrekord signature over the
    # digest the bundle names (sigstore-python then requires the artefact's to equal it).
    claimed = _signed_sha256(bundle)
    payload_type, payload = "", b""
    failed: VerificationFailed | None = None
    if bundle._dsse_envelope is not None:
        payload_type, payload = checked(lambda: verifier.verify_dsse(bundle, policy))
    elif claimed is not None:
        try:
            checked(lambda: verifier.verify_artifact(input_=artefact_hashed(claimed), bundle=bundle, policy=policy))
        except VerificationFailed as exc:
            failed = exc
    facts = certificate_facts(bundle.signing_certificate)
    entry = bundle.log_entry._inner

    def bind(artefact: bytes | bytearray, digest: str, directory: Path | None, model_file: str, *_: object) -> Verified:
        if directory is not None and not model_file:
            raise VerificationFailed("a Sigstore bundle signs one file, not a model directory: give the file it signs")
        if bundle._dsse_envelope is not None:
            _require_subject(payload_type, payload, digest)
        elif claimed is None or (failed is not None and digest != claimed):
            # sigstore-python's verdict on the artefact itself, with its own order of checks.
            checked(lambda: verifier.verify_artifact(input_=artefact_hashed(digest), bundle=bundle, policy=policy))
        elif failed is not None:
            raise failed
        elif digest != claimed:
            # What sigstore-python reports when the artefact's digest is not the bundle's.
            mismatch = SigstoreVerificationError("Bundle message digest mismatch")
            raise keyless.failure(mismatch, bundle.signing_certificate, keyless_signers, root_name)
        return Verified(
            artefact_sha256=digest,
            bundle_sha256=bundle_sha256,
            identity=facts["identity"],
            issuer=facts["issuer"],
            log_index=int(entry.log_index or 0),
            integrated_time=int(entry.integrated_time or 0),
            bundle_media_type=media_type,
            trust_root=root_name,
        )

    return SignedBundle(bind)


def _signed_sha256(bundle: Bundle) -> str | None:
    """The SHA-256 (hex) a hashedrekord bundle says it signs; None if it names none."""
    signature = bundle._inner.message_signature
    named = signature.message_digest if signature is not None else None
    if named is None or named.algorithm != HashAlgorithm.SHA2_256 or len(named.digest or b"") != 32:
        return None
    return bytes(named.digest).hex()


IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def _require_subject(payload_type: str, payload: bytes, digest: str) -> None:
    """A `sigstore attest` statement counts only if one of its subjects is these exact bytes."""
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationFailed(f"DSSE payload type {payload_type!r} is not an in-toto statement")
    try:
        subjects = json.loads(payload).get("subject") or []
        if any(s.get("digest", {}).get("sha256") == digest for s in subjects):
            return
    except (ValueError, AttributeError, TypeError):
        raise VerificationFailed("the DSSE payload is not a well-formed in-toto statement") from None
    raise VerificationFailed(
        f"the signed in-toto statement does not name this artefact (sha256 {digest}): "
        "it attests to other bytes (modified or replaced)"
    )
