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
    "managed-key-happy-path": "key-based bundles are out of scope: the loader verifies keyless identities only",
    "managed-key-and-trusted-root": "key-based bundles are out of scope: the loader verifies keyless identities only",
    "trust-root-tsa-validity-end-inclusive": "sigstore-python 4.5 treats a TSA's validity end as exclusive",
}
# Where the case's README says why it must fail, the reason we give must say so too.
REASONS = {
    "message-digest-mismatch_fail": "digest mismatch",
    "signature-mismatch_fail": "Signature is invalid",
    "bundle-from-wrong-instance_fail": "certificate chain",
    "checkpoint-wrong-roothash_fail": "root hash",
    "inclusion-proof-corrupted-hash_fail": "invalid root hash",
    "invalid-checkpoint-signature_fail": "checkpoint",
    "invalid-ct-key_fail": "SCT",
    "set-invalid-signature_fail": "SET",
    "dsse-invalid-sig_fail": "DSSE: invalid signature",
    "bundle-malformed-json_fail": "bundle is malformed",
    "bundle-empty-certificate-chain_fail": "certificate chain",
    "integrated-time-in-future_fail": "not valid at",
    "wrong-hashedrekord-entry_fail": "inconsistent",
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


@pytest.mark.parametrize("case", _cases())
def test_conformance_case(case: str) -> None:
    expected = not case.endswith("_fail")
    verified, reason = verify(_argv(case))
    if case in KNOWN_DIVERGENCES:
        assert verified != expected, f"{case} now agrees with the corpus: drop it from KNOWN_DIVERGENCES"
        return
    assert verified == expected, reason
    if case in REASONS:
        assert REASONS[case] in reason


@pytest.mark.parametrize(("case", "code"), [("happy-path-v0.3", 0), ("message-digest-mismatch_fail", 1)])
def test_the_adapter_speaks_the_client_protocol(case: str, code: int) -> None:
    _require_corpus()
    done = subprocess.run([PYTHON, "-m", "tests.conformance.verify_bundle", *_argv(case)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
