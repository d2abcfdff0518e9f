"""The unmodified sigstore CLI signs and verifies against the local authority, offline."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from authority.oidc import mint_token
from authority.state import AuthorityState
from tests.support import PYTHON, Authority

SIGSTORE = str(Path(PYTHON).with_name("sigstore"))
ISSUER = "https://oidc.sigstore.local"

# Runs inside `unshare -rn`: a fresh network namespace with only loopback.
OFFLINE_SCRIPT = r"""
set -eu
ip link set lo up
"$PY" -m authority init ca >/dev/null
"$PY" -m authority serve ca --port 18765 > serve.log 2>&1 &
server=$!
# Ready when the trust config names the port and the port answers (up to 120 s on a busy host).
ready() { grep -q 18765 ca/trust_config.json 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/18765) 2>/dev/null; }
for i in $(seq 1200); do ready && break; sleep 0.1; done
ready || { echo "authority serve did not start"; cat serve.log; exit 1; }
"$SIGSTORE" --trust-config ca/trust_config.json sign --identity-token "$("$PY" -m authority token ca --email alice@example.com)" model.joblib >/dev/null
verify() { "$SIGSTORE" --trust-config ca/trust_config.json verify identity --offline --cert-identity alice@example.com --cert-oidc-issuer "$ISSUER" --bundle model.joblib.sigstore.json model.joblib; }
verify
kill $server; wait $server 2>/dev/null || true
verify
"""


def test_sign_and_verify_with_only_loopback(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"model bytes")
    env = {**os.environ, "PY": PYTHON, "SIGSTORE": SIGSTORE, "ISSUER": ISSUER, "HOME": str(tmp_path)}
    done = subprocess.run(
        ["unshare", "-rn", "bash", "-c", OFFLINE_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    # Verified twice: with the server up and after it stopped.
    assert (done.stdout + done.stderr).count("OK: model.joblib") == 2


def _verify(authority: Authority, artefact: Path, bundle: Path, identity: str, issuer: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SIGSTORE, "--trust-config", str(authority.trust_config), "verify", "identity", "--offline",
         "--cert-identity", identity, "--cert-oidc-issuer", issuer, "--bundle", str(bundle), str(artefact)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture()
def signed(authority: Authority, tmp_path: Path) -> tuple[Path, Path]:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"the signed model")
    bundle = tmp_path / "model.joblib.sigstore.json"
    subprocess.run(
        [SIGSTORE, "--trust-config", str(authority.trust_config), "sign", "--identity-token",
         authority.token("alice@example.com"), "--bundle", str(bundle), str(artefact)],
        check=True, capture_output=True, timeout=60,
    )
    return artefact, bundle


def test_the_signed_artefact_verifies(authority: Authority, signed: tuple[Path, Path]) -> None:
    done = _verify(authority, *signed, "alice@example.com", authority.issuer)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout + done.stderr


def test_a_modified_artefact_fails(authority: Authority, signed: tuple[Path, Path]) -> None:
    artefact, bundle = signed
    artefact.write_bytes(b"the signed model, modified")
    done = _verify(authority, artefact, bundle, "alice@example.com", authority.issuer)
    assert done.returncode != 0
    assert "digest mismatch" in done.stderr


@pytest.mark.parametrize(
    ("identity", "issuer", "message"),
    [("bob@example.com", ISSUER, "SANs do not match"), ("alice@example.com", "https://accounts.google.com", "OIDCIssuer does not match")],
)
def test_another_identity_or_issuer_fails(authority: Authority, signed: tuple[Path, Path], identity: str, issuer: str, message: str) -> None:
    done = _verify(authority, *signed, identity, issuer)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_bundle_from_a_second_authority_fails(authority: Authority, other_authority: Authority, tmp_path: Path) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    bundle = tmp_path / "other.sigstore.json"
    bundle.write_bytes(other_authority.sign_bytes(artefact.read_bytes(), "alice@example.com"))
    done = _verify(authority, artefact, bundle, "alice@example.com", authority.issuer)
    assert done.returncode != 0
    assert "certificate chain" in done.stderr


def test_a_token_from_an_unknown_key_is_refused_at_signing(authority: Authority, tmp_path: Path) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    forged = mint_token(authority.state, "alice@example.com", key=ec.generate_private_key(ec.SECP256R1()))
    done = subprocess.run(
        [SIGSTORE, "--trust-config", str(authority.trust_config), "sign", "--identity-token", forged, str(artefact)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "FulcioClientError" in done.stderr
    assert not (tmp_path / "model.joblib.sigstore.json").exists()
    # The CLI hides the server's reason; ask the CA directly.
    answer = requests.post(
        f"{authority.server.url}/api/v2/signingCert",
        json={"certificateSigningRequest": "AAAA"},
        headers={"Authorization": f"Bearer {forged}"},
        timeout=10,
    )
    assert answer.status_code == 401
    assert "does not verify with the issuer's key" in answer.json()["message"]


def test_attest_with_an_slsa_predicate(authority: Authority, tmp_path: Path) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"attested model")
    predicate = tmp_path / "provenance.json"
    predicate.write_text(json.dumps({
        "buildDefinition": {"buildType": "https://example.com/train", "externalParameters": {}},
        "runDetails": {"builder": {"id": "https://example.com/pipeline"}},
    }))
    bundle = tmp_path / "model.joblib.sigstore.json"
    subprocess.run(
        [SIGSTORE, "--trust-config", str(authority.trust_config), "attest", "--predicate-type",
         "https://slsa.dev/provenance/v1", "--predicate", str(predicate), "--identity-token",
         authority.token("alice@example.com"), "--bundle", str(bundle), str(artefact)],
        check=True, capture_output=True, timeout=60,
    )
    assert json.loads(bundle.read_text())["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    done = _verify(authority, artefact, bundle, "alice@example.com", authority.issuer)
    assert done.returncode == 0, done.stderr


def test_the_log_survives_a_restart(authority: Authority) -> None:
    from authority.rekor import TransparencyLog

    reopened = TransparencyLog(AuthorityState.load(authority.state.directory))
    assert reopened.info()["rootHash"] == authority.server.log.info()["rootHash"]
    assert reopened.info()["treeSize"] >= 1


@pytest.mark.parametrize(
    ("path", "body", "token", "status", "message"),
    [
        ("/api/v1/log/entries", {"kind": "intoto", "apiVersion": "0.0.2", "spec": {}}, None, 400, "unsupported entry kind"),
        ("/api/v1/log/entries", {"kind": "hashedrekord", "apiVersion": "0.0.1", "spec": {}}, None, 400, "malformed hashedrekord"),
        ("/api/v2/signingCert", {"certificateSigningRequest": "bm90IGEgY3Ny"}, "valid", 400, "not valid PEM"),
        ("/api/v2/signingCert", {"publicKeyRequest": {}}, "valid", 400, "only certificateSigningRequest"),
        ("/api/v2/signingCert", {"certificateSigningRequest": "AAAA"}, "expired", 401, "expired"),
        ("/api/v2/signingCert", {"certificateSigningRequest": "AAAA"}, None, 401, "Authorization"),
    ],
)
def test_malformed_requests_get_clear_4xx(authority: Authority, path: str, body: dict, token: str | None, status: int, message: str) -> None:
    headers = {}
    if token == "valid":
        headers["Authorization"] = f"Bearer {authority.token()}"
    elif token == "expired":
        headers["Authorization"] = f"Bearer {mint_token(authority.state, 'a@example.com', lifetime=-60)}"
    answer = requests.post(authority.server.url + path, json=body, headers=headers, timeout=10)
    assert answer.status_code == status
    assert message in answer.json()["message"]


MODEL_SIGNING = str(Path(PYTHON).with_name("model_signing"))


def test_model_signing_signs_and_verifies_a_directory_model(authority: Authority, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    signature = tmp_path / "model.sig"
    trust = str(authority.trust_config)
    signed = subprocess.run(
        [MODEL_SIGNING, "sign", "sigstore", "--trust_config", trust, "--identity_token", authority.token("alice@example.com"),
         "--signature", str(signature), str(model)],
        capture_output=True, text=True, timeout=120,
    )
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signature.read_text())["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"

    def verify(identity: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [MODEL_SIGNING, "verify", "sigstore", "--trust_config", trust, "--identity", identity,
             "--identity_provider", authority.issuer, "--signature", str(signature), str(model)],
            capture_output=True, text=True, timeout=120,
        )

    assert verify("alice@example.com").returncode == 0
    assert verify("bob@example.com").returncode != 0
    (model / "config.json").write_text('{"tampered": true}')
    assert verify("alice@example.com").returncode != 0


def test_init_options_shape_the_trust_config(tmp_path: Path) -> None:
    def init(name: str, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "authority", "init", str(tmp_path / name), *flags], capture_output=True, text=True, timeout=60)

    def config(name: str) -> dict:
        return json.loads((tmp_path / name / "trust_config.json").read_text())

    assert "Rekor v1, with a timestamp authority" in init("default").stdout
    default = config("default")
    assert len(default["trustedRoot"]["timestampAuthorities"]) == 1 and len(default["signingConfig"]["tsaUrls"]) == 1
    assert "Rekor v2, no timestamp authority" in init("v2-bare", "--rekor-version", "2", "--no-timestamps").stdout
    bare = config("v2-bare")
    assert bare["trustedRoot"]["timestampAuthorities"] == [] and bare["signingConfig"]["tsaUrls"] == []
    assert [t["publicKey"]["keyDetails"] for t in bare["trustedRoot"]["tlogs"]] == ["PKIX_ECDSA_P256_SHA_256", "PKIX_ED25519"]
    refused = init("v3", "--rekor-version", "3")
    assert refused.returncode == 2 and "invalid choice" in refused.stderr


def test_without_a_tsa_the_bundle_relies_on_the_set(tmp_path: Path) -> None:
    from tests.support import start_authority

    bare = start_authority(tmp_path / "ca", timestamps=False)
    try:
        artefact = tmp_path / "model.joblib"
        artefact.write_bytes(b"model")
        bundle = artefact.with_name("model.joblib.sigstore.json")
        bundle.write_bytes(bare.sign_bytes(artefact.read_bytes(), "alice@example.com"))
        material = json.loads(bundle.read_text())["verificationMaterial"]
        assert not (material.get("timestampVerificationData") or {}).get("rfc3161Timestamps")
        assert material["tlogEntries"][0]["inclusionPromise"]["signedEntryTimestamp"]
        done = _verify(bare, artefact, bundle, "alice@example.com", bare.issuer)
        assert done.returncode == 0, done.stderr
    finally:
        bare.server.shutdown()
