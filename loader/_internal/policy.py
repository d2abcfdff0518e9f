"""Sigstore keyless signers as sigstore-python policies, and what a signing certificate says.

The signer kinds and the rule that a signer is of one kind live in the contract
(`loader/signers.py`); this is how the loader checks a keyless signer against a certificate
(and names the signer of a certificate, keyless or from a CA).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier
from sigstore.errors import VerificationError
from sigstore.verify.policy import (
    AllOf,
    GitHubWorkflowName,
    GitHubWorkflowRef,
    GitHubWorkflowRepository,
    GitHubWorkflowSHA,
    GitHubWorkflowTrigger,
    Identity,
    OIDCIssuer,
    VerificationPolicy,
)

from loader.signers import Signer, identity_pattern

__all__ = [
    "CLAIMS", "IdentityPattern", "Signer", "certificate_facts", "describe_certificate", "holds", "identity_pattern",
    "identities", "keyless_policy",
]

# The GitHub Actions claims a keyless signer may pin (loader.signers.KEYLESS_CLAIMS), with the
# sigstore-python check for each.
CLAIMS: dict[str, type[VerificationPolicy]] = {
    "workflow_repository": GitHubWorkflowRepository,
    "workflow_ref": GitHubWorkflowRef,
    "workflow_sha": GitHubWorkflowSHA,
    "workflow_name": GitHubWorkflowName,
    "workflow_trigger": GitHubWorkflowTrigger,
}
_OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_OID_OTHERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


def keyless_policy(signer: Signer) -> VerificationPolicy:
    """The sigstore-python policy for a keyless signer (one that `Signer.check` accepted)."""
    checks: list[VerificationPolicy] = [
        Identity(identity=signer.identity, issuer=signer.issuer)
        if signer.identity
        else IdentityPattern(signer.identity_regexp, signer.issuer)
    ]
    checks += [check(getattr(signer, name)) for name, check in CLAIMS.items() if getattr(signer, name)]  # type: ignore[call-arg]
    return AllOf(checks)


class IdentityPattern:
    """sigstore-python policy: the issuer matches exactly and one certificate identity (SAN)
    matches `pattern` in full (`^...$` is implied), in time linear in the identity's length."""

    def __init__(self, pattern: str, issuer: str) -> None:
        self._pattern = identity_pattern(pattern)
        self._issuer = OIDCIssuer(issuer)

    def verify(self, cert: x509.Certificate) -> None:
        self._issuer.verify(cert)
        sans = identities(cert)
        if not any(self._pattern.fullmatch(san) for san in sans):
            raise VerificationError(
                f"Certificate's SANs do not match the pattern {self._pattern.pattern}; actual SANs: {set(sans)}"
            )


def identities(cert: x509.Certificate) -> list[str]:
    """The identities sigstore-python matches: email and URI SANs and Sigstore's other name."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return []
    assert isinstance(san, x509.SubjectAlternativeName)
    found = list(san.get_values_for_type(x509.RFC822Name)) + list(san.get_values_for_type(x509.UniformResourceIdentifier))
    found += [other.value.decode(errors="replace") for other in san.get_values_for_type(x509.OtherName) if other.type_id == _OID_OTHERNAME]
    return found


def _extension_text(cert: x509.Certificate, oid: ObjectIdentifier, der: bool) -> str:
    try:
        raw = cert.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        return ""
    try:
        # Fulcio's newer extensions hold a DER UTF8String; the first ones hold raw UTF-8.
        return str(asn1.decode_der(str, raw)) if der else bytes(raw).decode()
    except (ValueError, UnicodeDecodeError):
        return repr(bytes(raw))


def certificate_facts(cert: x509.Certificate) -> dict[str, str]:
    """Identity, issuer and GitHub claims a signing certificate carries (for facts and messages)."""
    facts = {
        "identity": ", ".join(identities(cert)),
        "issuer": _extension_text(cert, _OID_ISSUER_V1, der=False) or _extension_text(cert, _OID_ISSUER_V2, der=True),
    }
    for name, check in CLAIMS.items():
        value = _extension_text(cert, check.oid, der=False)  # type: ignore[attr-defined]
        if value:
            facts[name] = value
    return facts


def describe_certificate(cert: x509.Certificate) -> str:
    facts = certificate_facts(cert)
    claims = "".join(f", {name}={value!r}" for name, value in facts.items() if name in CLAIMS)
    return f"{facts['identity']!r} (issuer {facts['issuer']!r}{claims})"


def holds(policy: VerificationPolicy, cert: x509.Certificate) -> bool:
    try:
        policy.verify(cert)
    except VerificationError:
        return False
    return True
