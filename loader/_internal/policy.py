"""Who may have signed a model: the accepted signers of a request, as sigstore-python policies.

One `Signer` shape for the loader: the gRPC message maps onto it field by field. A signer is one
of three kinds, chosen by the fields it sets:

- Sigstore keyless: `identity` (exact) or `identity_regexp` (full match), `issuer` (exact), and
  optional GitHub Actions claims;
- `key`: the name of a public key configured on the loader (`serve --public-key NAME=FILE`);
- `certificate_authority`: the name of a CA bundle configured on the loader
  (`serve --certificate-authority NAME=FILE`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import re2
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

from loader.errors import BadRequest

Method = Literal["sigstore", "key", "certificate"]

# The GitHub Actions claims a keyless signer may pin, with the sigstore-python check for each.
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

# Longest `identity_regexp` accepted: identities are URIs and emails, and RE2's memory for a
# compiled pattern grows with its length.
MAX_PATTERN = 1024


def identity_pattern(pattern: str, where: str = "identity_regexp") -> Any:
    """`pattern` compiled with RE2 (linear-time matching, the syntax cosign and Go's regexp use);
    raise BadRequest naming `where` if it is too long or RE2 cannot compile it (backreferences,
    lookaround: the constructs that need backtracking)."""
    if len(pattern) > MAX_PATTERN:
        raise BadRequest(f"{where}: the pattern is {len(pattern)} characters long; at most {MAX_PATTERN} are accepted")
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise BadRequest(
            f"{where}: not a regular expression RE2 accepts ({reason}); patterns use RE2 syntax "
            "(as cosign's --certificate-identity-regexp), matched in full"
        ) from None


@dataclass(frozen=True)
class Signer:
    """One accepted signer; `check()` says whether its fields make sense together."""

    identity: str = ""
    issuer: str = ""
    workflow_repository: str = ""
    workflow_ref: str = ""
    workflow_sha: str = ""
    workflow_name: str = ""
    workflow_trigger: str = ""
    identity_regexp: str = ""
    key: str = ""
    certificate_authority: str = ""

    @property
    def method(self) -> Method:
        if self.key:
            return "key"
        if self.certificate_authority:
            return "certificate"
        return "sigstore"

    def check(self, where: str = "signer") -> None:
        """Refuse (BadRequest naming the field) a signer that is ambiguous or incomplete."""
        keyless = {
            name: value
            for name, value in dataclasses.asdict(self).items()
            if value and name not in ("key", "certificate_authority")
        }
        if self.key and self.certificate_authority:
            raise BadRequest(f"{where}: set either key or certificate_authority, not both")
        if self.method != "sigstore":
            if keyless:
                chosen = "key" if self.key else "certificate_authority"
                raise BadRequest(
                    f"{where}: {sorted(keyless)} apply to Sigstore keyless signers only, not with {chosen}"
                )
            return
        if bool(self.identity) == bool(self.identity_regexp):
            raise BadRequest(
                f"{where}: a keyless signer needs exactly one of identity (exact) or identity_regexp "
                "(full match), or else key or certificate_authority"
            )
        if not self.issuer:
            raise BadRequest(f"{where}.issuer: a keyless signer needs the OIDC issuer (matched exactly)")
        if self.identity_regexp:
            identity_pattern(self.identity_regexp, f"{where}.identity_regexp")

    def describe(self) -> str:
        if self.key:
            return f"the key {self.key!r}"
        if self.certificate_authority:
            return f"a certificate from the CA {self.certificate_authority!r}"
        who = f"identity {self.identity!r}" if self.identity else f"identity matching {self.identity_regexp!r}"
        claims = [f"{name}={getattr(self, name)!r}" for name in CLAIMS if getattr(self, name)]
        return f"{who} (issuer {self.issuer!r}{', ' if claims else ''}{', '.join(claims)})"

    def policy(self) -> VerificationPolicy:
        """The sigstore-python policy for a keyless signer."""
        checks: list[VerificationPolicy] = [
            Identity(identity=self.identity, issuer=self.issuer)
            if self.identity
            else IdentityPattern(self.identity_regexp, self.issuer)
        ]
        checks += [check(getattr(self, name)) for name, check in CLAIMS.items() if getattr(self, name)]  # type: ignore[call-arg]
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
