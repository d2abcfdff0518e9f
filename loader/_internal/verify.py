"""Offline Sigstore verification of an in-memory artefact against an identity policy."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import sigstore
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import (
    AllOf,
    AnyOf,
    GitHubWorkflowName,
    GitHubWorkflowRef,
    GitHubWorkflowRepository,
    GitHubWorkflowSHA,
    GitHubWorkflowTrigger,
    Identity,
    VerificationPolicy,
)
from sigstore_models.common.v1 import HashAlgorithm

from loader.errors import BadRequest, VerificationFailed

PRODUCTION = "production"
_OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


@dataclass(frozen=True)
class Signer:
    """One accepted signer: exact certificate identity and OIDC issuer, plus optional claims."""

    identity: str
    issuer: str
    workflow_repository: str = ""
    workflow_ref: str = ""
    workflow_sha: str = ""
    workflow_name: str = ""
    workflow_trigger: str = ""

    def describe(self) -> str:
        extra = [
            f"{name}={value}"
            for name, value in (
                ("workflow_repository", self.workflow_repository),
                ("workflow_ref", self.workflow_ref),
                ("workflow_sha", self.workflow_sha),
                ("workflow_name", self.workflow_name),
                ("workflow_trigger", self.workflow_trigger),
            )
            if value
        ]
        return f"{self.identity} (issuer {self.issuer}{', ' if extra else ''}{', '.join(extra)})"

    def policy(self) -> VerificationPolicy:
        checks: list[VerificationPolicy] = [Identity(identity=self.identity, issuer=self.issuer)]
        for cls, value in (
            (GitHubWorkflowRepository, self.workflow_repository),
            (GitHubWorkflowRef, self.workflow_ref),
            (GitHubWorkflowSHA, self.workflow_sha),
            (GitHubWorkflowName, self.workflow_name),
            (GitHubWorkflowTrigger, self.workflow_trigger),
        ):
            if value:
                checks.append(cls(value))
        return AllOf(checks)


@dataclass(frozen=True)
class Verified:
    """What a successful verification established about the artefact."""

    artefact_sha256: str
    bundle_sha256: str
    identity: str
    issuer: str
    log_index: int
    integrated_time: int
    bundle_media_type: str
    trust_root: str


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

    def __init__(self, files: dict[str, Path], default: str) -> None:
        self._verifiers = {name: Verifier(trusted_root=_load_trusted_root(name, p)) for name, p in files.items()}
        if default not in self._verifiers:
            raise TrustConfigError(f"default trust root {default!r} is not one of {sorted(self._verifiers)}")
        self.default = default

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


def _identity_of(cert: x509.Certificate) -> tuple[str, str]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = [str(n.value) for n in san]  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        names = []
    issuer = ""
    for oid in (_OID_ISSUER_V1, _OID_ISSUER_V2):
        try:
            raw = cert.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]
        except x509.ExtensionNotFound:
            continue
        # V1 holds raw UTF-8; V2 a DER UTF8String (tag, length, text).
        if oid == _OID_ISSUER_V2:
            raw = raw[2 + (raw[1] & 0x7F if raw[1] & 0x80 else 0) :]
        issuer = raw.decode(errors="replace")
        break
    return ", ".join(names), issuer


def verify_artefact(
    artefact: bytes | bytearray,
    bundle_json: bytes | bytearray,
    signers: list[Signer],
    roots: TrustRoots,
    trust_root: str = "",
    digest: str | None = None,
) -> Verified:
    """Verify `artefact` (the exact bytes that will be deserialized) against its bundle.

    Checks the certificate chain, SCT, transparency log inclusion and time, and the signature
    over these bytes, then requires one of `signers` to match. Raises VerificationFailed naming
    the failed check. `digest` is the artefact's sha256 (hex) if the caller already has it.
    """
    if not signers:
        raise BadRequest("no accepted signers in the policy; name at least one identity and issuer")
    root_name, verifier = roots.verifier(trust_root)
    bundle_json = bytes(bundle_json)
    try:
        media_type = str(json.loads(bundle_json).get("mediaType", ""))
        bundle = Bundle.from_json(bundle_json)
    except (ValueError, SigstoreError, AttributeError) as exc:
        raise VerificationFailed(f"bundle is malformed: {_first_line(exc)}") from None
    policies = [signer.policy() for signer in signers]
    digest = digest or hashlib.sha256(artefact).hexdigest()
    try:
        if bundle._dsse_envelope is None:
            # The digest of these exact bytes, computed once: sigstore would otherwise hash again.
            hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(digest))
            verifier.verify_artifact(input_=hashed, bundle=bundle, policy=AnyOf(policies))
        else:
            payload_type, payload = verifier.verify_dsse(bundle, AnyOf(policies))
            _require_statement_about(payload_type, payload, digest)
    except SigstoreError as exc:
        cert = bundle.signing_certificate
        if any(_holds(policy, cert) for policy in policies):
            raise VerificationFailed(
                f"signature check failed against trust root {root_name!r}: "
                f"{_first_line(exc)}{_hint(str(exc))}"
            ) from None
        actual_identity, actual_issuer = _identity_of(cert)
        expected = "; ".join(signer.describe() for signer in signers)
        raise VerificationFailed(
            f"signer policy failed: the bundle is signed by {actual_identity!r} "
            f"(issuer {actual_issuer!r}), which matches none of the accepted signers: {expected}"
        ) from None
    actual_identity, actual_issuer = _identity_of(bundle.signing_certificate)
    entry = bundle.log_entry._inner
    return Verified(
        artefact_sha256=digest,
        bundle_sha256=hashlib.sha256(bundle_json).hexdigest(),
        identity=actual_identity,
        issuer=actual_issuer,
        log_index=int(entry.log_index or 0),
        integrated_time=int(entry.integrated_time or 0),
        bundle_media_type=media_type,
        trust_root=root_name,
    )


IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MODEL_SIGNING_PREDICATE = "https://model_signing/signature/v1.0"


def _require_statement_about(payload_type: str, payload: bytes, digest: str) -> None:
    """A DSSE bundle counts only if its signed in-toto statement names these exact bytes.

    Accepted: a subject whose sha256 is the artefact's (`sigstore attest`), or an OpenSSF
    model-signing manifest whose single resource is this file, hashed with sha256.
    """
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationFailed(f"DSSE payload type {payload_type!r} is not an in-toto statement")
    try:
        statement = json.loads(payload)
        subjects = statement.get("subject") or []
        if any(s.get("digest", {}).get("sha256") == digest for s in subjects):
            return
        if statement.get("predicateType") == MODEL_SIGNING_PREDICATE:
            resources = statement.get("predicate", {}).get("resources") or []
            if len(resources) == 1 and resources[0].get("algorithm") == "sha256" and resources[0].get("digest") == digest:
                return
    except (ValueError, AttributeError, TypeError):
        raise VerificationFailed("the DSSE payload is not a well-formed in-toto statement") from None
    raise VerificationFailed(
        f"the signed in-toto statement does not name this artefact (sha256 {digest}): "
        "it attests to other bytes (modified or replaced)"
    )


def _holds(policy: VerificationPolicy, cert: x509.Certificate) -> bool:
    try:
        policy.verify(cert)
    except SigstoreError:
        return False
    return True


_HINTS = {
    "digest mismatch": "the artefact's bytes are not the ones that were signed (modified or replaced)",
    "Signature is invalid": "the artefact's bytes are not the ones that were signed",
    "certificate chain": "the bundle was not issued under this trust root (another Sigstore instance?)",
}


def _hint(message: str) -> str:
    for needle, hint in _HINTS.items():
        if needle in message:
            return f" ({hint})"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
