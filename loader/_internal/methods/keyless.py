"""Sigstore keyless (`model_signing sign sigstore`): a Fulcio certificate for an OIDC identity,
logged in Rekor, verified against a trust root configured on the loader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from cryptography import x509
from model_signing import manifest as ms_manifest
from model_signing._signing import sign_sigstore, signing
from sigstore.models import Bundle
from sigstore.verify import Verifier
from sigstore.verify.policy import AnyOf, VerificationPolicy

from loader._internal.methods.base import SignatureRejected, SignedBy, SigningMethod, first_line, signed_manifest
from loader._internal.policy import certificate_facts, describe_certificate, holds, keyless_policy
from loader.errors import LoaderError, VerificationFailed
from loader.signers import Signer

if TYPE_CHECKING:
    from loader._internal.verify import TrustRoots


class KeylessVerifier(signing.Verifier):
    """model_signing's verifier interface over the loader's own sigstore-python verifier and
    policy (pinned trusted root, identity patterns, GitHub claims)."""

    def __init__(self, verifier: Verifier, policy: VerificationPolicy) -> None:
        self._verifier = verifier
        self._policy = policy

    def _verify_signed_content(self, signature: signing.Signature) -> tuple[str, bytes]:
        bundle = cast(sign_sigstore.Signature, signature).bundle
        return self._verifier.verify_dsse(bundle=bundle, policy=self._policy)


class Keyless(SigningMethod):
    name = "sigstore"
    bundle_title = "a Sigstore keyless bundle"
    # `sigstore sign` and `sigstore attest` bundles are keyless too (verify.py reads those).
    marks_model_signing = False
    logged = True

    def carries(self, material: Mapping[str, Any]) -> bool:
        # The method of any material the other methods do not claim (a certificate with log
        # entries); it is registered last.
        return True

    def read_signature(self, bundle_json: bytes) -> signing.Signature:
        return sign_sigstore.Signature(Bundle.from_json(bundle_json))

    def verify(
        self, signature: signing.Signature, signers: list[Signer], roots: TrustRoots, trust_root: str
    ) -> tuple[ms_manifest.Manifest, SignedBy]:
        root_name, verifier = roots.verifier(trust_root)
        bundle = cast(sign_sigstore.Signature, signature).bundle
        keyless = KeylessVerifier(verifier, AnyOf([keyless_policy(signer) for signer in signers]))
        try:
            signed = signed_manifest(keyless, signature)
        except SignatureRejected as exc:
            raise failure(exc.cause, bundle.signing_certificate, signers, root_name) from None
        facts = certificate_facts(bundle.signing_certificate)
        entry = bundle.log_entry._inner
        by = SignedBy(
            self.name, facts["identity"], facts["issuer"], root_name,
            int(entry.log_index or 0), int(entry.integrated_time or 0),
        )
        return signed, by


METHOD = Keyless()


def failure(exc: BaseException, cert: x509.Certificate, signers: list[Signer], root_name: str) -> VerificationFailed:
    """Tell a signature that does not verify from a signer the policy does not accept."""
    if isinstance(exc, LoaderError):
        return VerificationFailed(str(exc))
    if any(holds(keyless_policy(signer), cert) for signer in signers):
        return VerificationFailed(
            f"signature check failed against trust root {root_name!r}: {first_line(exc)}{_hint(str(exc))}"
        )
    expected = "; ".join(signer.describe() for signer in signers)
    return VerificationFailed(
        f"signer policy failed: the bundle is signed by {describe_certificate(cert)}, "
        f"which matches none of the accepted signers: {expected}"
    )


_ANOTHER_INSTANCE = "the bundle was not issued under this trust root (another Sigstore instance?)"
_HINTS = {
    "digest mismatch": "the artefact's bytes are not the ones that were signed (modified or replaced)",
    "Signature is invalid": "the artefact's bytes are not the ones that were signed",
    "certificate chain": _ANOTHER_INSTANCE,
    "not enough sources of verified time": _ANOTHER_INSTANCE,
    "keyring: invalid signature": _ANOTHER_INSTANCE,
}


def _hint(message: str) -> str:
    for needle, hint in _HINTS.items():
        if needle in message:
            return f" ({hint})"
    return ""
