"""What each configured trusted root trusts, and until when (`python -m loader trust show`).

Reads a trusted root (or the one inside a ClientTrustConfig) after sigstore-python has
accepted it, and lists its Fulcio CAs, Rekor logs (v1 with RFC 6962 log IDs, v2 tile logs with
signed-note key IDs), CT logs and timestamp authorities with their validity windows, flagging
what ends within the warning window.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509

from loader._internal.verify import TrustConfigError, _load_trusted_root

KINDS = ("Fulcio CA", "Rekor v1", "Rekor v2", "CT log", "TSA")


@dataclass(frozen=True)
class Certificate:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class Item:
    """One trusted key or CA of a root, with its validity window (`end` None: open-ended)."""

    kind: str
    name: str
    start: dt.datetime | None
    end: dt.datetime | None
    detail: str = ""
    certificates: list[Certificate] = field(default_factory=list)

    def status(self, now: dt.datetime, warn: dt.timedelta) -> str:
        """`retired` (window ended: kept to verify old bundles), `expires in N days`, or `active`."""
        if self.start and self.start > now:
            return "not yet valid"
        if self.end and self.end <= now:
            return "retired"
        ends = [t for t in (self.end, *(c.not_after for c in self.certificates)) if t]
        soonest = min(ends, default=None)
        if soonest and soonest <= now:
            return "certificate expired"
        if soonest and soonest - now <= warn:
            return f"EXPIRES IN {(soonest - now).days} DAYS ({soonest:%Y-%m-%d})"
        return "active"


@dataclass(frozen=True)
class RootReport:
    name: str
    path: Path
    items: list[Item]


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _window(doc: dict) -> tuple[dt.datetime | None, dt.datetime | None]:
    valid = doc.get("validFor") or {}
    return _time(valid.get("start")), _time(valid.get("end"))


def _certificates(chain: dict) -> list[Certificate]:
    certs = []
    for raw in (chain or {}).get("certificates", []):
        cert = x509.load_der_x509_certificate(base64.b64decode(raw["rawBytes"]))
        certs.append(Certificate(cert.subject.rfc4514_string(), cert.not_valid_before_utc, cert.not_valid_after_utc))
    return certs


_KEY_NAMES = {
    "PKIX_ECDSA_P256_SHA_256": "ECDSA P-256",
    "PKIX_ECDSA_P384_SHA_384": "ECDSA P-384",
    "PKIX_ECDSA_P521_SHA_512": "ECDSA P-521",
    "PKIX_ED25519": "Ed25519",
}


def _log(kind: str, doc: dict) -> Item:
    key = doc.get("publicKey") or {}
    start, end = _window(key)
    key_id = (doc.get("logId") or {}).get("keyId", "")
    details = str(key.get("keyDetails", ""))
    return Item(kind, str(doc.get("baseUrl", "")), start, end, f"{_KEY_NAMES.get(details, details)}, log ID {key_id}")


def _rekor_kind(doc: dict) -> str:
    """v1 logs are named by SHA-256 of their key (RFC 6962); v2 tile logs by a signed-note key ID."""
    spki = base64.b64decode((doc.get("publicKey") or {}).get("rawBytes", ""))
    key_id = base64.b64decode((doc.get("logId") or {}).get("keyId", ""))
    return "Rekor v1" if hashlib.sha256(spki).digest() == key_id else "Rekor v2"


def _authority(kind: str, doc: dict) -> Item:
    start, end = _window(doc)
    subject = doc.get("subject") or {}
    label = "/".join(str(v) for v in (subject.get("organization"), subject.get("commonName")) if v)
    return Item(kind, str(doc.get("uri", "")), start, end, label, _certificates(doc.get("certChain") or {}))


def describe(name: str, path: Path) -> RootReport:
    """Everything root `name` (file `path`) trusts; raises TrustConfigError if it is not a root."""
    _load_trusted_root(name, path)  # the same acceptance the verifier applies, same messages
    doc = json.loads(path.read_text())
    root = doc.get("trustedRoot", doc) if "clienttrustconfig" in str(doc.get("mediaType", "")) else doc
    items = [_authority("Fulcio CA", ca) for ca in root.get("certificateAuthorities", [])]
    items += [_log(_rekor_kind(t), t) for t in root.get("tlogs", [])]
    items += [_log("CT log", t) for t in root.get("ctlogs", [])]
    items += [_authority("TSA", ta) for ta in root.get("timestampAuthorities", [])]
    return RootReport(name, path, items)


def _day(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d}" if value else "open"


def render(reports: list[RootReport], now: dt.datetime, warn_days: int) -> str:
    """A plain-text listing, one block per root, one line per key or CA (plus its certificates)."""
    warn = dt.timedelta(days=warn_days)
    lines = []
    for report in reports:
        lines.append(f"trust root {report.name!r}: {report.path}")
        for kind in KINDS:
            for item in (i for i in report.items if i.kind == kind):
                lines.append(
                    f"  {item.kind:<10} {item.name}  [{_day(item.start)} .. {_day(item.end)}]  "
                    f"{item.status(now, warn)}  ({item.detail})"
                )
                for cert in item.certificates:
                    lines.append(f"  {'':<10}   certificate {cert.subject}  [{_day(cert.not_before)} .. {_day(cert.not_after)}]")
            if not any(i.kind == kind for i in report.items):
                lines.append(f"  {kind:<10} none")
    soon = [
        (r.name, i) for r in reports for i in r.items if i.status(now, warn).startswith(("EXPIRES", "certificate expired"))
    ]
    lines.append(
        f"{len(soon)} item(s) expire within {warn_days} days" if soon else f"nothing in use expires within {warn_days} days"
    )
    return "\n".join(lines)


def as_json(reports: list[RootReport], now: dt.datetime, warn_days: int) -> str:
    warn = dt.timedelta(days=warn_days)
    return json.dumps(
        [
            {
                "name": r.name,
                "path": str(r.path),
                "items": [{**asdict(i), "status": i.status(now, warn)} for i in r.items],
            }
            for r in reports
        ],
        default=str,
        indent=2,
    )


__all__ = ["Item", "RootReport", "TrustConfigError", "as_json", "describe", "render"]
