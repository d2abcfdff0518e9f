"""OIDC side: mint and validate ES256 identity tokens for the `sigstore` audience."""

from __future__ import annotations

import json
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from authority._crypto import b64url, b64url_decode
from authority.state import AuthorityState

AUDIENCE = "sigstore"
LEEWAY_SECONDS = 5


class TokenError(Exception):
    """The identity token is malformed, expired, or not from this issuer."""


def mint_token(
    state: AuthorityState,
    email: str,
    lifetime: int = 600,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> str:
    """An ID token for `email` (as `sub` and `email`), signed by the issuer's key (or `key`)."""
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", "kid": state.oidc_kid}
    claims = {
        "iss": state.issuer,
        "sub": email,
        "email": email,
        "email_verified": True,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    der = (key or state.oidc_key).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def validate_token(state: AuthorityState, token: str) -> dict:
    """Check signature, issuer, audience and lifetime; return the claims."""
    try:
        header_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(b64url_decode(header_b64))
        claims = json.loads(b64url_decode(claims_b64))
        raw_sig = b64url_decode(sig_b64)
    except ValueError as exc:
        raise TokenError(f"identity token is not a JWT: {exc}") from None
    if header.get("alg") != "ES256" or len(raw_sig) != 64:
        raise TokenError("identity token must be ES256-signed")
    der = encode_dss_signature(
        int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    )
    try:
        state.oidc_key.public_key().verify(
            der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise TokenError("identity token signature does not verify with the issuer's key") from None
    if claims.get("iss") != state.issuer:
        raise TokenError(f"token issuer {claims.get('iss')!r} is not {state.issuer!r}")
    aud = claims.get("aud")
    if aud != AUDIENCE and not (isinstance(aud, list) and AUDIENCE in aud):
        raise TokenError(f"token audience {aud!r} is not {AUDIENCE!r}")
    now = time.time()
    if not isinstance(claims.get("exp"), int) or claims["exp"] + LEEWAY_SECONDS < now:
        raise TokenError("identity token has expired")
    if not isinstance(claims.get("iat"), int) or claims["iat"] - LEEWAY_SECONDS > now:
        raise TokenError("identity token is issued in the future")
    if not claims.get("sub"):
        raise TokenError("identity token has no subject")
    return claims


def discovery_document(state: AuthorityState, base_url: str) -> dict:
    return {
        "issuer": state.issuer,
        "jwks_uri": f"{base_url}/.well-known/jwks.json",
        "authorization_endpoint": f"{base_url}/authorize",
        "token_endpoint": f"{base_url}/token",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }


def jwks(state: AuthorityState) -> dict:
    numbers = state.oidc_key.public_key().public_numbers()
    return {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "alg": "ES256",
                "use": "sig",
                "kid": state.oidc_kid,
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
            }
        ]
    }
