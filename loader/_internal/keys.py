"""Public keys and certificate authorities the operator trusts, by name (like trust roots).

A model's policy may only pick one of these by name: an artefact folder never brings its own
trust. Each entry becomes a model_signing verifier once, at start.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing._signing import sign_certificate, sign_ec_key, signing

from loader.errors import BadRequest

_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # OMS v1.0 algorithm registry: P-256, P-384, P-521


class KeyConfigError(ValueError):
    """A configured key or CA file is missing or unusable."""


def _read(kind: str, name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyConfigError(f"{kind} {name!r}: {path} does not exist") from None
    except OSError as exc:
        raise KeyConfigError(f"{kind} {name!r}: cannot read {path}: {exc.strerror}") from None


def _key_verifier(name: str, path: Path) -> signing.Verifier:
    data = _read("public key", name, path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyConfigError(f"public key {name!r}: {path} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise KeyConfigError(f"public key {name!r}: {path} is not an EC P-256, P-384 or P-521 public key")
    return sign_ec_key.Verifier(path)


def _authority_verifier(name: str, path: Path) -> signing.Verifier:
    data = _read("certificate authority", name, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyConfigError(f"certificate authority {name!r}: {path} holds no PEM certificate") from None
    if not certificates:
        raise KeyConfigError(f"certificate authority {name!r}: {path} holds no PEM certificate")
    return _OneAtATime(sign_certificate.Verifier([path]))


class _OneAtATime(signing.Verifier):
    """model_signing's certificate verifier sets the verification time on its shared X.509
    store for each bundle; concurrent loads must not see each other's time."""

    def __init__(self, inner: signing.Verifier) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def _verify_signed_content(self, signature: signing.Signature) -> tuple[str, bytes]:
        with self._lock:
            return self._inner._verify_signed_content(signature)


class SigningKeys:
    """Named model_signing verifiers for the `key` and `certificate_authority` signer kinds."""

    def __init__(self, keys: dict[str, Path] | None = None, authorities: dict[str, Path] | None = None) -> None:
        self._keys = {name: _key_verifier(name, path) for name, path in (keys or {}).items()}
        self._authorities = {name: _authority_verifier(name, path) for name, path in (authorities or {}).items()}

    @property
    def key_names(self) -> list[str]:
        return sorted(self._keys)

    @property
    def authority_names(self) -> list[str]:
        return sorted(self._authorities)

    def key(self, name: str) -> signing.Verifier:
        try:
            return self._keys[name]
        except KeyError:
            raise BadRequest(f"unknown public key {name!r}; this loader is configured with {self.key_names}") from None

    def authority(self, name: str) -> signing.Verifier:
        try:
            return self._authorities[name]
        except KeyError:
            raise BadRequest(
                f"unknown certificate authority {name!r}; this loader is configured with {self.authority_names}"
            ) from None
