"""Fulcio side: short-lived code-signing certificates with an embedded SCT."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from authority._crypto import der_octet_string, der_utf8_string, key_id, key_usage, sign_sha256, spki_der
from authority.state import AuthorityState

OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
CERT_LIFETIME = dt.timedelta(minutes=10)


class CertificateRequestError(Exception):
    """The CSR is malformed or fails its proof of possession."""


def _ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("the authority's CA keys are ECDSA P-256")
    return key


def _identity_san(claims: dict) -> x509.GeneralName:
    email = claims.get("email")
    if email:
        return x509.RFC822Name(email)
    return x509.UniformResourceIdentifier(claims["sub"])


def _signed_certificate_timestamp(state: AuthorityState, tbs_precert: bytes, when: dt.datetime) -> bytes:
    """An RFC 6962 v1 SCT over the precertificate entry, as a TLS-encoded SCT list."""
    timestamp_ms = int(when.timestamp() * 1000)
    issuer_key_hash = hashlib.sha256(spki_der(_ec_public_key(state.intermediate_cert))).digest()
    signed = (
        struct.pack(">BBQH", 0, 0, timestamp_ms, 1)
        + issuer_key_hash
        + len(tbs_precert).to_bytes(3, "big")
        + tbs_precert
        + struct.pack(">H", 0)
    )
    signature = sign_sha256(state.ct_key, signed)
    sct = (
        bytes([0])
        + key_id(state.ct_key.public_key())
        + struct.pack(">QH", timestamp_ms, 0)
        + bytes([4, 3])  # sha256, ecdsa
        + struct.pack(">H", len(signature))
        + signature
    )
    return struct.pack(">H", len(sct) + 2) + struct.pack(">H", len(sct)) + sct


def issue_certificate(state: AuthorityState, csr_pem: bytes, claims: dict) -> list[str]:
    """Issue a leaf for the CSR's key and the token's identity; return the PEM chain."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CertificateRequestError(f"certificate signing request is not valid PEM: {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateRequestError("CSR signature is invalid (no proof of possession)")

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    inter = state.intermediate_cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(inter.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(
            key_usage(sign=True),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public_key(inter)), critical=False
        )
        .add_extension(x509.SubjectAlternativeName([_identity_san(claims)]), critical=True)
        .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, claims["iss"].encode()), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(OID_ISSUER_V2, der_utf8_string(claims["iss"])), critical=False
        )
    )
    # The SCT signs the certificate as it is without the SCT extension (the precertificate).
    precert = builder.sign(state.intermediate_key, hashes.SHA256())
    sct_list = _signed_certificate_timestamp(state, precert.tbs_certificate_bytes, now)
    leaf = builder.add_extension(
        x509.UnrecognizedExtension(OID_SCT_LIST, der_octet_string(sct_list)), critical=False
    ).sign(state.intermediate_key, hashes.SHA256())
    return [
        c.public_bytes(serialization.Encoding.PEM).decode()
        for c in (leaf, inter, state.root_cert)
    ]
