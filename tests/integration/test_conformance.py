"""sigstore-conformance's offline bundle-verify corpus, run through the loader's verifier.

The corpus is read from ../shared/conformance (never copied into this repository).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conformance.verify_bundle import verify
from tests.support import PYTHON, ROOT

CORPUS = ROOT.parent / "shared" / "conformance" / "bundle-verify"
DEFAULT_IDENTITY = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
DEFAULT_ISSUER = "https://token.actions.githubusercontent.com"

# Cases where our verdict differs from the corpus, and why. Each is asserted to still differ,
# so this table cannot go stale silently.
KNOWN_DIVERGENCES = {
    "intoto-with-custom-trust-root": "sigstore-python 4.5 rejects Rekor `intoto` entries (only hashedrekord and dsse)",
    # The loader's key signers take OpenSSF model-signing bundles; a Sigstore bundle signed with a
    # managed key (hashedrekord, no certificate) is refused by its own check (KEY_BUNDLE below).
    "managed-key-happy-path": "Sigstore bundles signed with a managed key are refused: key signers take model-signing bundles",
    "managed-key-and-trusted-root": "Sigstore bundles signed with a managed key are refused: key signers take model-signing bundles",
    "trust-root-tsa-validity-end-inclusive": "sigstore-python 4.5 treats a TSA's validity end as exclusive",
}
# The loader's refusal of a Sigstore bundle signed with a managed key (the adapter passes --key
# to the loader's own key signers).
KEY_BUNDLE = "the policy accepts only: the key 'conformance'"
KEY_BUNDLE_CASES = ("managed-key-happy-path", "managed-key-and-trusted-root")
# Every `_fail` case, with the error type and the phrase that names its cause. The phrases are
# sigstore-python's own first message line (the loader passes it through) unless the loader
# refuses earlier itself. Cases refused for a reason other than their own are in OTHER_REASONS.
VF = "VerificationFailed"
CHAIN = "failed to build timestamp certificate chain: validation failed: candidates exhausted: signature does not match"
INCONSISTENT = "transparency log entry is inconsistent with other materials"
NO_VERIFIED_TIME = "not enough sources of verified time"
NOT_VALID_AT = "cert is not valid at validation time"
REASONS: dict[str, tuple[str, str]] = {
    "bundle-empty-certificate-chain_fail": (VF, "expected non-empty certificate chain in bundle"),
    "bundle-from-wrong-instance_fail": (VF, CHAIN),
    "bundle-invalid-base64-signature_fail": (VF, "bundle is malformed: failed to load bundle"),
    "bundle-malformed-json_fail": (VF, "bundle is malformed: Unterminated string"),
    "bundle-negative-log-index_fail": (VF, "bundle is malformed: failed to load bundle"),
    "bundle-unknown-version_fail": (VF, "bundle is malformed: failed to load bundle"),
    "checkpoint-bad-keyhint_fail": (VF, "invalid log entry: checkpoint: Signature not found for log ID"),
    "checkpoint-wrong-roothash_fail": (VF, "Inclusion proof contains invalid root hash signature"),
    "dsse-invalid-sig_fail": (VF, "DSSE: invalid signature"),
    "dsse-mismatch-envelope_fail": (VF, "log entry payload hash does not match bundle"),
    "dsse-mismatch-sig_fail": (VF, "log entry signatures do not match bundle"),
    "inclusion-proof-corrupted-hash_fail": (VF, "inclusion proof contains invalid root hash"),
    # The entry's public key was modified: the modified body no longer hashes to the logged leaf.
    "incorrect-public-key_fail": (VF, "inclusion proof contains invalid root hash"),
    "integrated-time-in-future_fail": (VF, NOT_VALID_AT),
    "intoto-missing-inclusion-proof_fail": (VF, "bundle is malformed: failed to load bundle"),
    "invalid-checkpoint-signature_fail": (VF, "invalid log entry: checkpoint: invalid signature"),
    "invalid-ct-key_fail": (VF, "failed to verify SCT on signing certificate"),
    "message-digest-mismatch_fail": (VF, "Bundle message digest mismatch"),
    "rekor2-checkpoint-missing-log-signature_fail": (VF, "malformed Note: must contain at least one signature"),
    "rekor2-checkpoint-missing-origin_fail": (VF, "malformed LogCheckpoint: too few items in header"),
    "rekor2-checkpoint-missing-root-hash_fail": (VF, "malformed LogCheckpoint: too few items in header"),
    "rekor2-checkpoint-missing-size_fail": (VF, "malformed LogCheckpoint: too few items in header"),
    "rekor2-checkpoint-no-matching-signature_fail": (VF, "invalid log entry: checkpoint: invalid signature"),
    "rekor2-dsse-invalid-sig_fail": (VF, "DSSE: invalid signature"),
    "rekor2-dsse-mismatch-envelope_fail": (VF, INCONSISTENT),
    "rekor2-dsse-mismatch-sig_fail": (VF, INCONSISTENT),
    "rekor2-no-inclusion-proof_fail": (VF, "bundle is malformed: failed to load bundle"),
    "rekor2-no-timestamp_fail": (VF, "bundle must contain an inclusion promise or signed timestamp(s)"),
    # The TSA stamp does not verify (outside validity, other payload, untrusted TSA): no verified time.
    "rekor2-timestamp-outside-trust-root-tsa-validity_fail": (VF, NO_VERIFIED_TIME),
    "rekor2-timestamp-outside-tsa-cert-validity_fail": (VF, NO_VERIFIED_TIME),
    "rekor2-timestamp-payload-mismatch_fail": (VF, NO_VERIFIED_TIME),
    "rekor2-timestamp-untrusted-tsa-without-embedded-cert_fail": (VF, NO_VERIFIED_TIME),
    "rekor2-timestamp-with-incorrect-time_fail": (VF, NOT_VALID_AT),
    "set-invalid-signature_fail": (VF, "invalid log entry: SET: invalid inclusion promise"),
    "signature-mismatch_fail": (VF, "Signature is invalid for input"),
    "trust-root-tlog-missing-validity-start_fail": ("TrustConfigError", "is not a Sigstore trusted root or client trust config (1 validation error for TrustedRoot)"),
    "wrong-hashedrekord-artifact_fail": (VF, INCONSISTENT),
    "wrong-hashedrekord-cert-and-sig_fail": (VF, INCONSISTENT),
    "wrong-hashedrekord-entry_fail": (VF, INCONSISTENT),
    "wrong-material_fail": (VF, "Bundle message digest mismatch"),
}
# "failed to load bundle" is all the loader's first line says for a schema error; sigstore's own
# message names the field, which must be the one the case is about.
MALFORMED_FIELD = {
    "bundle-invalid-base64-signature_fail": "messageSignature.signature",
    "bundle-negative-log-index_fail": "Value exceeds uint64 domain: -1",
    "bundle-unknown-version_fail": "version=99.9",
    "intoto-missing-inclusion-proof_fail": "tlogEntries.0.inclusionProof",
    "rekor2-no-inclusion-proof_fail": "tlogEntries.0.inclusionProof",
}
# Refused, but not for the reason the case is about: they do not count towards the score of
# cases refused for their own reason. Each is asserted, so the table cannot go stale.
INTOTO = "Integrated time only supported for dsse/hashedrekord 0.0.1 types"
OTHER_REASONS: dict[str, tuple[str, str, str]] = {
    "bundle-with-root-cert_fail": (VF, "entry must contain inclusion proof, with checkpoint", "the bundle's entry has no checkpoint, which sigstore-python checks before the chain"),
    "intoto-expired-certificate_fail": (VF, INTOTO, "sigstore-python 4.5 rejects Rekor intoto entries"),
    "intoto-log-entry-mismatch_fail": (VF, INTOTO, "sigstore-python 4.5 rejects Rekor intoto entries"),
    "intoto-set-outside-signing-cert-validity_fail": (VF, INTOTO, "sigstore-python 4.5 rejects Rekor intoto entries"),
    "intoto-tsa-timestamp-outside-cert-validity_fail": (VF, INTOTO, "sigstore-python 4.5 rejects Rekor intoto entries"),
    "invalid-inclusion-proof_fail": (VF, "entry must contain inclusion proof, with checkpoint", "the old proof has no checkpoint, refused before its hashes are checked"),
    "managed-key-no-key_fail": (VF, "expected certificate in bundle", "a key bundle without its key material is malformed before any key is tried"),
    "managed-key-wrong-key_fail": ("KeyConfigError", "is not a PEM public key", "the case's key is not one the loader can be configured with"),
    "rekor2-timestamp-untrusted-tsa-with-embedded-cert_fail": (VF, "Invalid Timestamp Response", "sigstore-python cannot parse the stamp's embedded certificate before trusting the TSA"),
}


def _cases() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def _argv(case: str) -> list[str]:
    folder = CORPUS / case
    argv = ["--bundle", str(folder / "bundle.sigstore.json")]
    if (folder / "key.pub").exists():
        argv += ["--key", str(folder / "key.pub")]
    else:
        identity = (folder / "identity").read_text().strip() if (folder / "identity").exists() else DEFAULT_IDENTITY
        issuer = (folder / "issuer").read_text().strip() if (folder / "issuer").exists() else DEFAULT_ISSUER
        argv += ["--certificate-identity", identity, "--certificate-oidc-issuer", issuer]
    if (folder / "trusted_root.json").exists():
        argv += ["--trusted-root", str(folder / "trusted_root.json")]
    artefact = folder / "artifact" if (folder / "artifact").exists() else CORPUS / "a.txt"
    return [*argv, str(artefact)]


def _require_corpus() -> None:
    """CI has ../shared beside the clone: there a missing corpus is a failure, not a skip."""
    if not CORPUS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"conformance corpus missing at {CORPUS}")
        pytest.skip(f"conformance corpus missing at {CORPUS}")


def test_the_corpus_is_there() -> None:
    _require_corpus()
    assert len(_cases()) >= 66


def _sigstore_bundle_error(case: str) -> str:
    from sigstore.models import Bundle

    try:
        Bundle.from_json((CORPUS / case / "bundle.sigstore.json").read_bytes())
    except Exception as exc:  # noqa: BLE001 - the message is what is compared
        return str(exc)
    return ""


@pytest.mark.parametrize("case", _cases())
def test_conformance_case(case: str) -> None:
    """The verdict for every case; for every `_fail` case, its cause (an unexpected exception fails)."""
    expected = not case.endswith("_fail")
    verified, reason = verify(_argv(case), strict=True)
    if case in KNOWN_DIVERGENCES:
        assert verified != expected, f"{case} now agrees with the corpus: drop it from KNOWN_DIVERGENCES"
        if case in KEY_BUNDLE_CASES:
            assert KEY_BUNDLE in reason, reason
        return
    assert verified == expected, reason
    if expected:
        return
    assert (case in REASONS) != (case in OTHER_REASONS), f"{case}: name its cause in REASONS or OTHER_REASONS"
    kind, phrase = REASONS[case] if case in REASONS else OTHER_REASONS[case][:2]
    assert reason.startswith(f"{kind}: "), reason
    assert phrase in reason, reason
    if case in MALFORMED_FIELD:
        assert MALFORMED_FIELD[case] in _sigstore_bundle_error(case)


def test_the_score_counts_only_refusals_for_their_own_reason() -> None:
    _require_corpus()
    failing = [c for c in _cases() if c.endswith("_fail")]
    assert sorted(failing) == sorted([*REASONS, *OTHER_REASONS])
    print(f"_fail cases refused for their own reason: {len(REASONS)} of {len(failing)}")


@pytest.mark.parametrize(("case", "code"), [("happy-path-v0.3", 0), ("message-digest-mismatch_fail", 1)])
def test_the_adapter_speaks_the_client_protocol(case: str, code: int) -> None:
    _require_corpus()
    done = subprocess.run([PYTHON, "-m", "tests.conformance.verify_bundle", *_argv(case)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
