"""A certificate chain (`model_signing sign certificate`): a leaf certificate, with its
intermediates in the bundle, chaining to a CA the operator configured on the loader by name
(`serve --certificate-authority NAME=FILE`); no transparency log."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from model_signing import manifest as ms_manifest
from model_signing._signing import signing

from loader._internal.methods.base import SignedBy, SigningMethod, first_vouching
from loader._internal.methods.key import read_protobuf_signature
from loader._internal.policy import certificate_facts
from loader.errors import VerificationFailed
from loader.signers import Signer

if TYPE_CHECKING:
    from loader._internal.verify import TrustRoots


class Certificate(SigningMethod):
    name = "certificate"
    bundle_title = "a model-signing bundle signed with a certificate chain"

    def carries(self, material: Mapping[str, Any]) -> bool:
        # A chain without log entries; a keyless bundle's certificate is logged.
        return "x509CertificateChain" in material and not material.get("tlogEntries")

    def read_signature(self, bundle_json: bytes) -> signing.Signature:
        return read_protobuf_signature(bundle_json)

    def verify(
        self, signature: signing.Signature, signers: list[Signer], roots: TrustRoots, trust_root: str
    ) -> tuple[ms_manifest.Manifest, SignedBy]:
        signed, signer = first_vouching(
            signature, signers, lambda signer: roots.keys.authority(signer.certificate_authority),
            lambda signer, detail: (
                f"the signing certificate does not chain to the CA {signer.certificate_authority!r}: signed "
                f"under another CA, or not valid for signing ({detail})"
            ),
        )
        leaf = _leaf(signature)
        _require_code_signing(leaf)
        _require_current(leaf)
        identity = certificate_facts(leaf)["identity"] or leaf.subject.rfc4514_string()
        return signed, SignedBy(self.name, identity, leaf.issuer.rfc4514_string(), signer.certificate_authority)


METHOD = Certificate()


def _leaf(signature: signing.Signature) -> x509.Certificate:
    chain = signature.bundle.verification_material.x509_certificate_chain  # type: ignore[attr-defined]
    return x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)


def _require_current(leaf: x509.Certificate) -> None:
    """OMS v1.0 §8.2: the leaf must be within its validity period. model_signing checks the chain
    at the leaf's notBefore only; with no timestamp to say when it signed, that period is now."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise VerificationFailed(
            f"OMS v1.0 §8.2: the signing certificate {leaf.subject.rfc4514_string()!r} is not valid now (valid "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC); "
            "renew the signing certificate and sign again"
        )


def _require_code_signing(leaf: x509.Certificate) -> None:
    """RFC 5280 4.2.1.12: a leaf whose extended key usage is given may serve only those uses, so
    it must list codeSigning (model_signing accepts any leaf with digitalSignature, such as a TLS
    server certificate); a leaf without the extension is not restricted by it."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CODE_SIGNING in usage:
        return
    named = ", ".join(getattr(oid, "_name", "") or oid.dotted_string for oid in usage) or "(empty)"
    raise VerificationFailed(
        f"the signing certificate {leaf.subject.rfc4514_string()!r} has extended key usage {named}, not codeSigning: "
        "it was not issued for signing code or models (RFC 5280 4.2.1.12); sign with a code-signing certificate"
    )
