"""The authority's on-disk state: keys, CA and TSA chains, trusted root and client trust config."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authority._crypto import (
    b64,
    key_id,
    key_usage,
    load_ed25519_key,
    load_key,
    new_key,
    note_key_id,
    save_key,
    spki_der,
)

ORGANIZATION = "mlserver-sigstore local authority"
DEFAULT_ISSUER = "https://oidc.sigstore.local"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
SIGNING_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
OPERATOR = "mlserver-sigstore local authority"
TSA_PATH = "/api/v1/timestamp"
REKOR_VERSIONS = (1, 2)


class StateError(Exception):
    """The authority directory is missing or incomplete."""


@dataclass(frozen=True)
class AuthorityState:
    """Everything the services need, loaded from an initialised directory."""

    directory: Path
    issuer: str
    origin: str
    not_before: dt.datetime
    root_cert: x509.Certificate
    intermediate_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    ct_key: ec.EllipticCurvePrivateKey
    rekor_key: ec.EllipticCurvePrivateKey
    oidc_key: ec.EllipticCurvePrivateKey
    # Rekor v2 (tile log, Ed25519 key) is served only when initialised with --rekor-version 2.
    rekor_version: int = 1
    rekor_v2_key: ed25519.Ed25519PrivateKey | None = None
    rekor_v2_origin: str = ""
    # The RFC 3161 timestamp authority; None when initialised with --no-timestamps.
    tsa_key: ec.EllipticCurvePrivateKey | None = None
    tsa_cert: x509.Certificate | None = None
    tsa_root_cert: x509.Certificate | None = None

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    @property
    def oidc_kid(self) -> str:
        return key_id(self.oidc_key.public_key()).hex()[:16]

    @classmethod
    def load(cls, directory: Path) -> AuthorityState:
        meta_path = directory / "authority.json"
        if not meta_path.is_file():
            raise StateError(
                f"{directory} is not an initialised authority: run `python -m authority init {directory}`"
            )
        meta = json.loads(meta_path.read_text())
        keys = directory / "keys"
        rekor_version = int(meta.get("rekor_version", 1))
        timestamps = (keys / "tsa.key").is_file()
        return cls(
            directory=directory,
            issuer=meta["issuer"],
            origin=meta["origin"],
            not_before=dt.datetime.fromisoformat(meta["not_before"]),
            root_cert=x509.load_pem_x509_certificate((keys / "root.crt").read_bytes()),
            intermediate_cert=x509.load_pem_x509_certificate(
                (keys / "intermediate.crt").read_bytes()
            ),
            intermediate_key=load_key(keys / "intermediate.key"),
            ct_key=load_key(keys / "ctlog.key"),
            rekor_key=load_key(keys / "rekor.key"),
            oidc_key=load_key(keys / "oidc.key"),
            rekor_version=rekor_version,
            rekor_v2_key=load_ed25519_key(keys / "rekor-v2.key") if rekor_version == 2 else None,
            rekor_v2_origin=str(meta.get("rekor_v2_origin", "")),
            tsa_key=load_key(keys / "tsa.key") if timestamps else None,
            tsa_cert=x509.load_pem_x509_certificate((keys / "tsa.crt").read_bytes()) if timestamps else None,
            tsa_root_cert=(
                x509.load_pem_x509_certificate((keys / "tsa-root.crt").read_bytes()) if timestamps else None
            ),
        )


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    path_length: int | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            key_usage(certify=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_tsa(keys: Path, not_before: dt.datetime) -> None:
    """A TSA root and a timestamping leaf (critical EKU timeStamping, as RFC 3161 requires)."""
    root_key, leaf_key = new_key(), new_key()
    root_cert = _ca_cert(_name("local-tsa-root"), _name("local-tsa-root"), root_key, root_key, not_before, 0)
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("local-tsa"))
        .issuer_name(root_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(sign=True),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    # The TSA root key is not kept: nothing but this one leaf is ever issued under it.
    save_key(leaf_key, keys / "tsa.key")
    (keys / "tsa.crt").write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    (keys / "tsa-root.crt").write_bytes(root_cert.public_bytes(serialization.Encoding.PEM))


def init_authority(
    directory: Path,
    issuer: str = DEFAULT_ISSUER,
    url: str = "http://127.0.0.1:8765",
    rekor_version: int = 1,
    timestamps: bool = True,
) -> AuthorityState:
    """Create a fresh authority in `directory`: CA, CT log, Rekor log (v1, plus a v2 tile log
    with `rekor_version=2`), OIDC keys and, unless `timestamps` is off, an RFC 3161 TSA."""
    if (directory / "authority.json").exists():
        raise StateError(f"{directory} already holds an authority; choose an empty directory")
    if rekor_version not in REKOR_VERSIONS:
        raise StateError(f"Rekor version {rekor_version} is not supported: choose 1 or 2")
    keys = directory / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (directory / "log").mkdir(exist_ok=True)
    # Backdate a little so that clocks a few minutes apart (host vs container) still agree.
    not_before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)

    root_key, inter_key = new_key(), new_key()
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "local-fulcio-root"),
        ]
    )
    inter_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "local-fulcio-intermediate"),
        ]
    )
    root_cert = _ca_cert(root_name, root_name, root_key, root_key, not_before, 1)
    inter_cert = _ca_cert(inter_name, root_name, inter_key, root_key, not_before, 0)

    save_key(root_key, keys / "root.key")
    save_key(inter_key, keys / "intermediate.key")
    for name in ("ctlog", "rekor", "oidc"):
        save_key(new_key(), keys / f"{name}.key")
    if rekor_version == 2:
        save_key(ed25519.Ed25519PrivateKey.generate(), keys / "rekor-v2.key")
    if timestamps:
        _create_tsa(keys, not_before)
    (keys / "root.crt").write_bytes(root_cert.public_bytes(serialization.Encoding.PEM))
    (keys / "intermediate.crt").write_bytes(inter_cert.public_bytes(serialization.Encoding.PEM))
    meta = {
        "issuer": issuer,
        "origin": f"rekor.sigstore.local - {secrets.randbelow(10**18)}",
        "not_before": not_before.isoformat(),
        "rekor_version": rekor_version,
    }
    if rekor_version == 2:
        # A C2SP checkpoint origin doubles as the note signer's name: no spaces.
        meta["rekor_v2_origin"] = f"rekor-v2.sigstore.local/{secrets.token_hex(8)}"
    (directory / "authority.json").write_text(json.dumps(meta, indent=2) + "\n")
    state = AuthorityState.load(directory)
    write_trust_files(state, url)
    return state


def _log_instance(key: ec.EllipticCurvePrivateKey, url: str, start: str) -> dict:
    public = key.public_key()
    return {
        "baseUrl": url,
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": b64(spki_der(public)),
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            "validFor": {"start": start},
        },
        "logId": {"keyId": b64(key_id(public))},
    }


def _v2_log_instance(state: AuthorityState, url: str, start: str) -> dict:
    """The Rekor v2 log as production lists its tile logs: Ed25519 key, C2SP note key ID."""
    assert state.rekor_v2_key is not None
    public = state.rekor_v2_key.public_key()
    return {
        "baseUrl": url,
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": b64(spki_der(public)),
            "keyDetails": "PKIX_ED25519",
            "validFor": {"start": start},
        },
        "logId": {"keyId": b64(note_key_id(state.rekor_v2_origin, public))},
    }


def _timestamp_authorities(state: AuthorityState, url: str, start: str) -> list[dict]:
    if state.tsa_cert is None or state.tsa_root_cert is None:
        return []
    return [
        {
            "subject": {"organization": ORGANIZATION, "commonName": "local-tsa"},
            "uri": url + TSA_PATH,
            # Signing certificate first, root last: the order sigstore-python builds the chain in.
            "certChain": {
                "certificates": [
                    {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                    for c in (state.tsa_cert, state.tsa_root_cert)
                ]
            },
            "validFor": {"start": start},
        }
    ]


def trusted_root(state: AuthorityState, url: str) -> dict:
    """The Sigstore trusted root (v0.1) that verifiers pin for this authority."""
    start = state.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
        "tlogs": [_log_instance(state.rekor_key, url, start)]
        + ([_v2_log_instance(state, url, start)] if state.rekor_version == 2 else []),
        "certificateAuthorities": [
            {
                "subject": {"organization": ORGANIZATION, "commonName": "local-fulcio"},
                "uri": url,
                "certChain": {
                    "certificates": [
                        {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                        for c in (state.intermediate_cert, state.root_cert)
                    ]
                },
                "validFor": {"start": start},
            }
        ],
        "ctlogs": [_log_instance(state.ct_key, url, start)],
        "timestampAuthorities": _timestamp_authorities(state, url, start),
    }


def trust_config(state: AuthorityState, url: str) -> dict:
    """A ClientTrustConfig: the trusted root plus where to sign (`sigstore --trust-config`)."""
    start = state.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")

    def service(path: str = "", version: int = 1) -> dict:
        return {
            "url": url + path,
            "majorApiVersion": version,
            "validFor": {"start": start},
            "operator": OPERATOR,
        }

    # Both logs under one operator: sigstore-python signs to the highest major version listed
    # (`sigstore sign --rekor-version 1` still picks v1).
    tlogs = [service()] + ([service(version=2)] if state.rekor_version == 2 else [])

    return {
        "mediaType": TRUST_CONFIG_MEDIA_TYPE,
        "trustedRoot": trusted_root(state, url),
        "signingConfig": {
            "mediaType": SIGNING_CONFIG_MEDIA_TYPE,
            "caUrls": [service()],
            "oidcUrls": [service()],
            "rekorTlogUrls": tlogs,
            "tsaUrls": [service(TSA_PATH)] if state.tsa_key is not None else [],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaConfig": {"selector": "ANY"},
        },
    }


def write_trust_files(state: AuthorityState, url: str) -> None:
    """(Re)write trusted_root.json and trust_config.json for the URL the services answer on."""
    for name, doc in (
        ("trusted_root.json", trusted_root(state, url)),
        ("trust_config.json", trust_config(state, url)),
    ):
        tmp = state.directory / f".{name}.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(state.directory / name)
