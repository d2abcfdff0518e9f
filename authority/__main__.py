"""`python -m authority {init,serve,token}`: a local Sigstore-compatible authority."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from authority.state import DEFAULT_ISSUER, AuthorityState, StateError, init_authority


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m authority",
        description="Local Sigstore-compatible authority (Fulcio, Rekor v1/v2, RFC 3161 TSA, OIDC) for offline signing. "
        "For tests, demos and air-gapped sites; never a default trust root.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create keys, trusted_root.json and trust_config.json")
    p_init.add_argument("dir", type=Path)
    p_init.add_argument("--issuer", default=DEFAULT_ISSUER, help="OIDC issuer URL put in tokens")
    p_init.add_argument("--url", default="http://127.0.0.1:8765", help="where `serve` will answer")
    p_init.add_argument(
        "--rekor-version", type=int, choices=(1, 2), default=1,
        help="2: also serve a Rekor v2 tile log (hashedrekord 0.0.2, no SET) that signers pick by default",
    )
    p_init.add_argument(
        "--no-timestamps", action="store_true",
        help="no RFC 3161 timestamp authority (bundles then rely on Rekor v1's SET for time)",
    )
    p_serve = sub.add_parser("serve", help="serve Fulcio, Rekor and OIDC discovery over HTTP")
    p_serve.add_argument("dir", type=Path)
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8765)
    p_token = sub.add_parser("token", help="print an identity token for an email address")
    p_token.add_argument("dir", type=Path)
    p_token.add_argument("--email", required=True)
    p_token.add_argument("--lifetime", type=int, default=600, help="seconds")
    args = parser.parse_args(argv)

    try:
        if args.command == "init":
            state = init_authority(
                args.dir, issuer=args.issuer, url=args.url,
                rekor_version=args.rekor_version, timestamps=not args.no_timestamps,
            )
            tsa_note = "with a timestamp authority" if state.tsa_key is not None else "no timestamp authority"
            print(
                f"initialised authority in {args.dir} (issuer {state.issuer}, "
                f"Rekor v{state.rekor_version}, {tsa_note})"
            )
        elif args.command == "serve":
            from authority.server import AuthorityServer

            server = AuthorityServer(AuthorityState.load(args.dir), args.host, args.port)
            print(f"authority serving on {server.url}; trust config: {args.dir / 'trust_config.json'}", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
        else:
            from authority.oidc import mint_token

            print(mint_token(AuthorityState.load(args.dir), args.email, lifetime=args.lifetime))
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
