"""The interface every signing method implements, and what the methods share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from model_signing import manifest as ms_manifest
from model_signing._signing import signing
from OpenSSL.crypto import X509StoreContextError
from sigstore.errors import Error as SigstoreError

from loader._internal import oms
from loader.errors import VerificationFailed
from loader.signers import Signer

if TYPE_CHECKING:
    from loader._internal.verify import TrustRoots


@dataclass(frozen=True)
class SignedBy:
    """Who signed a bundle, as the facts of a verification say it."""

    method: str
    identity: str
    issuer: str
    trust: str
    log_index: int = 0
    integrated_time: int = 0


class SigningMethod(ABC):
    """One way of signing an OpenSSF model-signing bundle (as model_signing's `sign_*.py`).

    `name` is the method of its signer kind in `loader.signers.KINDS`; `bundle_title` names its
    bundles in messages. `marks_model_signing`: a bundle with this method's material is a
    model-signing bundle even without the model-signing predicate (there is no `sigstore sign`
    bundle of the kind); `logged`: its signatures are in a transparency log."""

    name: str
    bundle_title: str
    marks_model_signing: bool = True
    logged: bool = False

    @abstractmethod
    def carries(self, material: Mapping[str, Any]) -> bool:
        """Whether a bundle's `verificationMaterial` is this method's (read before verification,
        only to pick the method)."""

    @abstractmethod
    def read_signature(self, bundle_json: bytes) -> signing.Signature:
        """The bundle as the model_signing signature type this method's verifier expects."""

    @abstractmethod
    def verify(
        self, signature: signing.Signature, signers: list[Signer], roots: TrustRoots, trust_root: str
    ) -> tuple[ms_manifest.Manifest, SignedBy]:
        """The signed manifest, once one of `signers` (all of this method's kind) vouches for
        it; VerificationFailed naming what failed otherwise."""


class SignatureRejected(Exception):
    """The signature stage failed (as opposed to the signed payload being unusable)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Staged(signing.Verifier):
    """Runs a model_signing verifier, marking failures of its signature stage."""

    def __init__(self, inner: signing.Verifier) -> None:
        self._inner = inner

    def _verify_signed_content(self, signature: signing.Signature) -> tuple[str, bytes]:
        try:
            payload_type, payload = self._inner._verify_signed_content(signature)
        except (SigstoreError, ValueError, InvalidSignature, X509StoreContextError) as exc:
            raise SignatureRejected(exc) from exc
        # The statement whose signature was just verified, before model_signing reads it.
        oms.check_statement(payload)
        return payload_type, payload


def signed_manifest(verifier: signing.Verifier, signature: signing.Signature) -> ms_manifest.Manifest:
    """`verifier.verify` (raising SignatureRejected if the signature stage fails), with an
    unusable payload reported as such."""
    try:
        return _Staged(verifier).verify(signature)
    except SignatureRejected:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationFailed(
            f"the signed payload is not an OpenSSF model-signing manifest: {first_line(exc)}"
        ) from None


def first_vouching(
    signature: signing.Signature,
    signers: list[Signer],
    verifier_of: Callable[[Signer], signing.Verifier],
    refusal: Callable[[Signer, str], str],
) -> tuple[ms_manifest.Manifest, Signer]:
    """The signed manifest and the first of `signers` whose verifier accepts the signature;
    VerificationFailed with each signer's `refusal` (given the cause) if none does."""
    refusals = []
    for signer in signers:
        try:
            return signed_manifest(verifier_of(signer), signature), signer
        except SignatureRejected as exc:
            detail = first_line(exc.cause) if str(exc.cause).strip() else "the signature does not verify with it"
            refusals.append(refusal(signer, detail))
    raise VerificationFailed("; ".join(refusals))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
