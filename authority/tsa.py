"""Timestamp authority side: RFC 3161 time-stamp tokens (TSTInfo in CMS SignedData).

The ASN.1 structures come from asn1crypto; cryptography signs. The signed attributes are the
ones RFC 3161 and RFC 5816 ask for: content type, message digest and the ESS signing
certificate v2 that binds the token to the TSA certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization

from authority._crypto import sign_sha256
from authority.state import AuthorityState

# A private policy arc for this local TSA (the verifier does not pin a policy).
POLICY_OID = "1.3.6.1.4.1.57264.2.1"
_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
REQUEST_CONTENT_TYPE = "application/timestamp-query"
REPLY_CONTENT_TYPE = "application/timestamp-reply"


class TimestampRequestError(Exception):
    """The body is not a usable RFC 3161 TimeStampReq."""


def _parse_request(der: bytes) -> tsp.TimeStampReq:
    try:
        request = tsp.TimeStampReq.load(der)
        _ = request.native  # forces a full parse: asn1crypto parses lazily
    except (ValueError, TypeError) as exc:
        raise TimestampRequestError(f"body is not a DER TimeStampReq: {exc}") from None
    if request["version"].native != "v1":
        raise TimestampRequestError("only TimeStampReq version 1 is supported")
    imprint = request["message_imprint"]
    algorithm = imprint["hash_algorithm"]["algorithm"].native
    if algorithm not in _DIGEST_SIZES:
        raise TimestampRequestError(f"unsupported hash algorithm {algorithm!r}: use sha256, sha384 or sha512")
    if len(imprint["hashed_message"].native) != _DIGEST_SIZES[algorithm]:
        raise TimestampRequestError(f"message imprint is not a {algorithm} digest")
    return request


def _signer_info(state: AuthorityState, tst_der: bytes) -> cms.SignerInfo:
    assert state.tsa_cert is not None and state.tsa_key is not None
    cert_der = state.tsa_cert.public_bytes(serialization.Encoding.DER)
    cert = asn1_x509.Certificate.load(cert_der)
    signed_attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(tst_der).digest()]}),
            cms.CMSAttribute(
                {
                    "type": "signing_certificate_v2",
                    "values": [{"certs": [{"cert_hash": hashlib.sha256(cert_der).digest()}]}],
                }
            ),
        ]
    )
    # The signature covers the DER SET OF the attributes (tag 0x31), not the [0] field encoding.
    signature = sign_sha256(state.tsa_key, signed_attrs.dump())
    return cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": cert.issuer, "serial_number": cert.serial_number}
                    )
                }
            ),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": signed_attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            "signature": signature,
        }
    )


def timestamp(state: AuthorityState, request_der: bytes, now: dt.datetime | None = None) -> bytes:
    """Answer a DER TimeStampReq with a granted DER TimeStampResp signed by the TSA key."""
    if state.tsa_cert is None or state.tsa_key is None:
        raise TimestampRequestError("this authority has no timestamp authority (initialised with --no-timestamps)")
    request = _parse_request(request_der)
    gen_time = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    info: dict[str, object] = {
        "version": "v1",
        "policy": request["req_policy"].native or POLICY_OID,
        "message_imprint": request["message_imprint"],
        "serial_number": secrets.randbits(64),
        "gen_time": core.GeneralizedTime(gen_time),
        "accuracy": tsp.Accuracy({"seconds": 1}),
    }
    if request["nonce"].native is not None:
        info["nonce"] = request["nonce"].native
    tst_info = tsp.TSTInfo(info)
    tst_der = tst_info.dump()
    certificates = []
    if request["cert_req"].native:
        certificates.append(
            asn1_x509.Certificate.load(state.tsa_cert.public_bytes(serialization.Encoding.DER))
        )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info", "content": tst_info},
            "certificates": certificates or None,
            "signer_infos": [_signer_info(state, tst_der)],
        }
    )
    response = tsp.TimeStampResp(
        {
            "status": {"status": "granted"},
            "time_stamp_token": cms.ContentInfo({"content_type": "signed_data", "content": signed_data}),
        }
    )
    return bytes(response.dump())


class _StatusOnlyResp(core.Sequence):
    """TimeStampResp without its OPTIONAL token (asn1crypto's class requires one)."""

    _fields = [("status", tsp.PKIStatusInfo)]


def rejection(reason: str) -> bytes:
    """A TimeStampResp with status `rejection`, failure `badDataFormat` and the reason as text."""
    status = tsp.PKIStatusInfo({"status": "rejection", "status_string": [reason], "fail_info": {"bad_data_format"}})
    return bytes(_StatusOnlyResp({"status": status}).dump())

