"""Who may sign a model: the kinds of signer a policy names, and the rule that a signer is of
exactly one kind.

Part of the contract, like `loader/proto/v1/loader.proto` (whose `Signer` message has these
fields, one for one): the runtime checks a policy with it when it reads the model settings, the
loader checks every request with it, and both CLIs build their signers with it. How a kind's
signature is then verified is the loader's business (`loader/_internal/signing/`, one module
per kind, registered under the kind's `method`).

A kind is declared once, in `KINDS`: the fields it uses, what must hold among them, and how
it is named in messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from loader.errors import BadRequest

__all__ = [
    "FIELDS", "KEYLESS_CLAIMS", "KINDS", "MAX_PATTERN", "Signer", "SignerError", "SignerKind", "identity_pattern",
    "kind_of",
]

# Longest `identity_regexp` accepted: identities are URIs and emails, and RE2's memory for a
# compiled pattern grows with its length.
MAX_PATTERN = 1024
# The GitHub Actions claims a keyless signer may pin (exact matches).
KEYLESS_CLAIMS = ("workflow_repository", "workflow_ref", "workflow_sha", "workflow_name", "workflow_trigger")


class SignerError(BadRequest):
    """A signer whose fields do not make one complete kind; `field` is the field at fault ("" for
    the signer as a whole) and `reason` what is wrong with it."""

    def __init__(self, field: str, reason: str, where: str = "signer") -> None:
        super().__init__(f"{where}{'.' if field else ''}{field}: {reason}")
        self.field = field
        self.reason = reason

    def at(self, where: str) -> SignerError:
        """The same error, located at `where` (such as `signers[0]`)."""
        return SignerError(self.field, self.reason, where)


@dataclass(frozen=True)
class SignerKind:
    """One kind of signer. `method` names it in VerificationFacts.signing_method and the loader's
    verifier registry; `fields` are the loader.v1.Signer fields it uses, with what each holds;
    `check` refuses (SignerError) what must not be among them; `describe` names a signer of the
    kind in messages."""

    method: str
    title: str
    fields: Mapping[str, str]
    check: Callable[[Mapping[str, str]], None]
    describe: Callable[[Mapping[str, str]], str]


def identity_pattern(pattern: str) -> Any:
    """`pattern` compiled with RE2 (linear-time matching, the syntax cosign and Go's regexp use);
    raise SignerError at `identity_regexp` if it is too long or RE2 cannot compile it
    (backreferences, lookaround: the constructs that need backtracking)."""
    if len(pattern) > MAX_PATTERN:
        raise SignerError(
            "identity_regexp", f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN} are accepted"
        )
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise SignerError(
            "identity_regexp",
            f"not a regular expression RE2 accepts ({reason}); patterns use RE2 syntax "
            "(as cosign's --certificate-identity-regexp), matched in full",
        ) from None


def _check_keyless(signer: Mapping[str, str]) -> None:
    if bool(signer.get("identity")) == bool(signer.get("identity_regexp")):
        raise SignerError(
            "identity", "a keyless signer needs exactly one of identity (exact) or identity_regexp (full match)"
        )
    if not signer.get("issuer"):
        raise SignerError("issuer", "a keyless signer needs the OIDC issuer (matched exactly)")
    if signer.get("identity_regexp"):
        identity_pattern(signer["identity_regexp"])


def _describe_keyless(signer: Mapping[str, str]) -> str:
    who = (
        f"identity {signer['identity']!r}" if signer.get("identity")
        else f"identity matching {signer.get('identity_regexp', '')!r}"
    )
    claims = "".join(f", {name}={signer[name]!r}" for name in KEYLESS_CLAIMS if signer.get(name))
    return f"{who} (issuer {signer.get('issuer', '')!r}{claims})"


def _named(field: str, what: str) -> Callable[[Mapping[str, str]], str]:
    return lambda signer: f"{what} {signer.get(field, '')!r}"


def _nothing_more(signer: Mapping[str, str]) -> None:
    """A kind chosen by one field, which is set once the kind is chosen."""


# Every kind, in precedence order: a signer that sets fields of several kinds is read as the
# first of them, and the first field of another kind is named as the fault.
KINDS: tuple[SignerKind, ...] = (
    SignerKind(
        "key", "public-key signers", {"key": "name of a public key configured on the loader"},
        _nothing_more, _named("key", "the key"),
    ),
    SignerKind(
        "certificate", "certificate-chain signers",
        {"certificate_authority": "name of a CA configured on the loader"},
        _nothing_more, _named("certificate_authority", "a certificate from the CA"),
    ),
    SignerKind(
        "sigstore", "Sigstore keyless signers",
        {
            "identity": "certificate identity (email or URI SAN), exact",
            "identity_regexp": "certificate identity, full regular-expression match (RE2)",
            "issuer": "OIDC issuer URL, exact",
            **{claim: f"GitHub Actions claim {claim}, exact" for claim in KEYLESS_CLAIMS},
        },
        _check_keyless, _describe_keyless,
    ),
)


def _kinds_set(signer: Mapping[str, str]) -> list[SignerKind]:
    return [kind for kind in KINDS if any(signer.get(name) for name in kind.fields)]


def kind_of(signer: Mapping[str, str]) -> SignerKind:
    """The one kind of signer whose fields `signer` (field: value, empty for unset) sets, once its
    fields are complete; raise SignerError naming the field otherwise."""
    chosen = _kinds_set(signer)
    if not chosen:
        kinds = "; ".join(f"{kind.title}: {', '.join(kind.fields)}" for kind in KINDS)
        raise SignerError("", f"an empty signer; give the fields of one kind ({kinds})")
    kind = chosen[0]
    for other in chosen[1:]:
        stray = next(name for name in other.fields if signer.get(name))
        mine = next(name for name in kind.fields if signer.get(name))
        raise SignerError(
            stray, f"applies to {other.title} only, but this signer sets {mine} ({kind.title}): "
            "give the fields of one kind of signer",
        )
    kind.check(signer)
    return kind


@dataclass(frozen=True)
class Signer:
    """One accepted signer: the fields of loader.v1.Signer, one for one (empty: unset)."""

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

    @classmethod
    def from_message(cls, message: Any) -> Signer:
        """The signer a loader.v1.Signer message names (its fields are these, one for one)."""
        return cls(**{name: getattr(message, name) for name in FIELDS})

    def fields(self) -> dict[str, str]:
        """The fields that are set."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value}

    def check(self, where: str = "signer") -> SignerKind:
        """This signer's kind; SignerError (a BadRequest) naming `where` and the field if its
        fields are not those of exactly one complete kind."""
        try:
            return kind_of(self.fields())
        except SignerError as exc:
            raise exc.at(where) from None

    @property
    def kind(self) -> SignerKind:
        """This signer's kind (without `check`'s completeness rules, which its caller has
        applied; SignerError if it is of no kind or of several)."""
        chosen = _kinds_set(self.fields())
        return chosen[0] if len(chosen) == 1 else kind_of(self.fields())

    @property
    def method(self) -> str:
        return self.kind.method

    def describe(self) -> str:
        return self.kind.describe(self.fields())


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Signer))
