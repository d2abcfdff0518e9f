"""sigstore-conformance client protocol, backed by the loader's verifier (loader._internal.verify).

    verify-bundle --bundle F --certificate-identity I --certificate-oidc-issuer U [--trusted-root F] FILE
    verify-bundle --bundle F --key K [--trusted-root F] FILE

Exit 0 when the bundle verifies, 1 otherwise (the reason goes to stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loader._internal.keys import KeyConfigError, SigningKeys
from loader._internal.verify import (
    PRODUCTION,
    Signer,
    TrustConfigError,
    TrustRoots,
    production_root_file,
    verify_artefact,
)
from loader.errors import LoaderError


def verify(argv: list[str], strict: bool = False) -> tuple[bool, str]:
    """Run one verification as the protocol describes; return (verified, reason).

    A refusal is a LoaderError (or a TrustConfigError for a malformed trusted root). With `strict`
    (the tests), any other exception propagates: it is a crash, not a verdict.
    """
    parser = argparse.ArgumentParser(prog="verify-bundle")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--certificate-identity")
    parser.add_argument("--certificate-oidc-issuer")
    parser.add_argument("--key", type=Path)
    parser.add_argument("--trusted-root", type=Path)
    parser.add_argument("input")
    args = parser.parse_args(argv)
    if args.input.startswith("sha256:"):
        return False, "digest inputs are not supported: the loader verifies the exact bytes it then loads"
    root = args.trusted_root or production_root_file()
    try:
        if args.key:
            # The loader's own key support: the key is configured by name, as `--public-key` does.
            roots = TrustRoots({PRODUCTION: root}, PRODUCTION, SigningKeys(keys={"conformance": args.key}))
            signers = [Signer(key="conformance")]
        else:
            roots = TrustRoots({PRODUCTION: root}, PRODUCTION)
            signers = [Signer(args.certificate_identity, args.certificate_oidc_issuer)]
        verified = verify_artefact(Path(args.input).read_bytes(), args.bundle.read_bytes(), signers, roots)
    except (LoaderError, TrustConfigError, KeyConfigError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a conformance client reports, never crashes
        if strict:
            raise
        return False, f"unexpected {type(exc).__name__}: {exc}"
    return True, f"signed by {verified.identity or verified.signing_method}"


def main() -> int:
    ok, reason = verify(sys.argv[1:])
    print(("OK: " if ok else "FAIL: ") + reason, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
