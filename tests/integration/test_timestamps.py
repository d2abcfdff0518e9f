"""Bundles like production's: RFC 3161 signed timestamps (Rekor v1 mode) and Rekor v2 entries
(hashedrekord 0.0.2, C2SP checkpoint, no SET), signed by the real `sigstore` CLI offline,
verified by `sigstore verify`, the loader and `runtime.SigstoreModel`; and the same bundles,
stripped of their time sources or re-signed by strangers, refused with the reason."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from mlserver.settings import ModelParameters, ModelSettings
from rfc3161_client import TimestampRequestBuilder, VerifierBuilder, decode_timestamp_response
from rfc3161_client.errors import VerificationError as TimestampVerificationError
from sigstore.models import ClientTrustConfig

from authority.rekor_v2 import TileLog
from authority.server import AuthorityServer
from authority.state import TSA_PATH, AuthorityState
from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from runtime import SigstoreModel
from tests.support import (
    PYTHON,
    SIGNER,
    Authority,
    LoaderProcess,
    call,
    put,
    refused,
    start_authority,
    start_loader,
    stop_process,
)

SIGSTORE = str(Path(PYTHON).with_name("sigstore"))
EMAIL = "alice@example.com"

# Runs inside `unshare -rn` (only loopback): one authority per Rekor version, each signs the
# artefact with the real CLI, `sigstore verify identity --offline` checks it with the server up
# and again after it stopped.
OFFLINE_SCRIPT = r"""
set -eu
ip link set lo up
for v in 1 2; do
  port=$((18770 + v))
  "$PY" -m authority init "ca$v" --rekor-version "$v" >/dev/null
  "$PY" -m authority serve "ca$v" --port "$port" > "serve$v.log" 2>&1 &
  server=$!
  # Ready when the trust config names the port and the port answers (up to 120 s on a busy host).
  ready() { grep -q "$port" "ca$v/trust_config.json" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
  for i in $(seq 1200); do ready && break; sleep 0.1; done
  ready || { echo "authority serve did not start"; cat "serve$v.log"; exit 1; }
  cp model.joblib "model-v$v.joblib"
  "$SIGSTORE" --trust-config "ca$v/trust_config.json" sign \
    --identity-token "$("$PY" -m authority token "ca$v" --email "$EMAIL")" "model-v$v.joblib" >/dev/null
  verify() { "$SIGSTORE" --trust-config "ca$v/trust_config.json" verify identity --offline \
    --cert-identity "$EMAIL" --cert-oidc-issuer https://oidc.sigstore.local \
    --bundle "model-v$v.joblib.sigstore.json" "model-v$v.joblib"; }
  verify
  kill $server; wait $server 2>/dev/null || true
  verify
done
"""


@pytest.fixture(scope="module")
def cli_signed(tmp_path_factory: pytest.TempPathFactory, digits_svm_bytes: bytes) -> Path:
    """A folder holding model-v1.joblib and model-v2.joblib, each with the CLI's bundle and its authority."""
    work = tmp_path_factory.mktemp("cli-signed")
    (work / "model.joblib").write_bytes(digits_svm_bytes)
    env = {**os.environ, "PY": PYTHON, "SIGSTORE": SIGSTORE, "EMAIL": EMAIL, "HOME": str(work)}
    done = subprocess.run(
        ["unshare", "-rn", "bash", "-c", OFFLINE_SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    # Two versions, each verified twice (server up, server stopped).
    assert (done.stdout + done.stderr).count("OK: model-v1.joblib") == 2, done.stderr
    assert (done.stdout + done.stderr).count("OK: model-v2.joblib") == 2, done.stderr
    return work


def _bundle(path: Path) -> dict:
    return json.loads(path.read_text())


def _entry(bundle: dict) -> dict:
    return bundle["verificationMaterial"]["tlogEntries"][0]


def _timestamps(bundle: dict) -> list[str]:
    data = bundle["verificationMaterial"].get("timestampVerificationData") or {}
    return [t["signedTimestamp"] for t in data.get("rfc3161Timestamps") or []]


def _tsa_verifier(trust_config: Path):  # type: ignore[no-untyped-def]
    """An rfc3161-client verifier for the first TSA of a trust config (leaf first, root last)."""
    from cryptography import x509

    root = json.loads(trust_config.read_text())["trustedRoot"]
    chain = [
        x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"]))
        for c in root["timestampAuthorities"][0]["certChain"]["certificates"]
    ]
    return VerifierBuilder().tsa_certificate(chain[0]).add_root_certificate(chain[-1]).build()


@pytest.mark.parametrize("version", [1, 2])
def test_the_cli_bundle_carries_what_production_bundles_carry(cli_signed: Path, version: int) -> None:
    bundle = _bundle(cli_signed / f"model-v{version}.joblib.sigstore.json")
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    entry = _entry(bundle)
    stamps = _timestamps(bundle)
    assert len(stamps) == 1
    # The stamp covers the signature and chains to the TSA the trusted root lists.
    signature = base64.b64decode(bundle["messageSignature"]["signature"])
    response = decode_timestamp_response(base64.b64decode(stamps[0]))
    assert _tsa_verifier(cli_signed / f"ca{version}" / "trust_config.json").verify_message(response, signature)
    if version == 1:
        assert entry["kindVersion"] == {"kind": "hashedrekord", "version": "0.0.1"}
        assert entry["inclusionPromise"]["signedEntryTimestamp"]
    else:
        assert entry["kindVersion"] == {"kind": "hashedrekord", "version": "0.0.2"}
        assert "inclusionPromise" not in entry and int(entry.get("integratedTime", 0)) == 0
        checkpoint = entry["inclusionProof"]["checkpoint"]["envelope"]
        origin = checkpoint.split("\n", 1)[0]
        assert origin.startswith("rekor-v2.sigstore.local/") and f"\u2014 {origin} " in checkpoint
        root = json.loads((cli_signed / "ca2" / "trust_config.json").read_text())["trustedRoot"]
        v2_log = next(t for t in root["tlogs"] if t["publicKey"]["keyDetails"] == "PKIX_ED25519")
        assert entry["logId"]["keyId"] == v2_log["logId"]["keyId"]


def test_the_v2_signing_config_lists_both_logs_by_major_version(cli_signed: Path) -> None:
    config = json.loads((cli_signed / "ca2" / "trust_config.json").read_text())["signingConfig"]
    assert sorted(s["majorApiVersion"] for s in config["rekorTlogUrls"]) == [1, 2]
    assert [s["url"].endswith(TSA_PATH) for s in config["tsaUrls"]] == [True]
    v1_only = json.loads((cli_signed / "ca1" / "trust_config.json").read_text())["signingConfig"]
    assert [s["majorApiVersion"] for s in v1_only["rekorTlogUrls"]] == [1]


@pytest.fixture(scope="module")
def cli_loader(tmp_path_factory: pytest.TempPathFactory, cli_signed: Path) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("cli-loader"), cli_signed,
        {"local": cli_signed / "ca1" / "trust_config.json", "v2": cli_signed / "ca2" / "trust_config.json"},
    )
    yield proc
    stop_process(proc.process)


@pytest.mark.parametrize(("version", "trust_root"), [(1, "local"), (2, "v2")])
def test_the_loader_and_the_runtime_load_the_cli_bundle(cli_loader: LoaderProcess, cli_signed: Path, version: int, trust_root: str) -> None:
    state = AuthorityState.load(cli_signed / f"ca{version}")
    request = loader_pb2.VerifyAndLoadRequest(
        artefact=f"model-v{version}.joblib", signers=[loader_pb2.Signer(identity=EMAIL, issuer=state.issuer)],
        trust_root=trust_root, model_name=f"cli-v{version}",
    )
    with grpc.insecure_channel(cli_loader.endpoint) as channel:
        replies = list(loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=60))
    header = replies[0].header
    assert header.facts.identity == EMAIL and header.size == sum(len(r.chunk) for r in replies[1:]) > 0

    policy = {"signers": [{"identity": EMAIL, "issuer": state.issuer}], "trust_root": trust_root, "endpoint": cli_loader.endpoint}
    settings = ModelSettings(
        name=f"cli-v{version}", implementation=SigstoreModel,
        parameters=ModelParameters(uri=str(cli_signed / f"model-v{version}.joblib"), extra={"sigstore": policy}),
    )
    model = SigstoreModel(settings)
    assert asyncio.run(model.load())


# --- refusals, through the loader -------------------------------------------------------------


@pytest.fixture(scope="module")
def v2_authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    auth = start_authority(tmp_path_factory.mktemp("authority-v2"), rekor_version=2)
    yield auth
    auth.server.shutdown()


@pytest.fixture(scope="module")
def time_loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority, v2_authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("time-loader"), models_root,
        {"local": authority.trust_config, "v2": v2_authority.trust_config},
    )
    yield proc
    stop_process(proc.process)


def _stamp_by(tsa: Authority, bundle: dict) -> str:
    """A real RFC 3161 stamp over the bundle's signature, from `tsa`'s timestamp authority."""
    request = TimestampRequestBuilder().data(base64.b64decode(bundle["messageSignature"]["signature"])).nonce(nonce=True).build()
    answer = requests.post(
        tsa.server.url + TSA_PATH, data=request.as_bytes(), headers={"Content-Type": "application/timestamp-query"}, timeout=10
    )
    answer.raise_for_status()
    return base64.b64encode(answer.content).decode()


def _forge_checkpoint(bundle: dict) -> None:
    """Re-sign the checkpoint note with a stranger's Ed25519 key, keeping the log's name and key hint."""
    proof = _entry(bundle)["inclusionProof"]
    note, signature_line = proof["checkpoint"]["envelope"].split("\n\n")
    name, sig = signature_line.removeprefix("\u2014 ").strip().split(" ")
    hint = base64.b64decode(sig)[:4]
    forged = ed25519.Ed25519PrivateKey.generate().sign((note + "\n").encode())
    proof["checkpoint"]["envelope"] = f"{note}\n\n\u2014 {name} {base64.b64encode(hint + forged).decode()}\n"


def _drop_timestamps(bundle: dict, other: Authority | None = None) -> None:
    bundle["verificationMaterial"].pop("timestampVerificationData", None)


def _drop_set(bundle: dict, other: Authority | None = None) -> None:
    _entry(bundle).pop("inclusionPromise")


def _restamp_by(bundle: dict, other: Authority) -> None:
    stamps = bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    stamps[0]["signedTimestamp"] = _stamp_by(other, bundle)


def _drop_set_and_restamp(bundle: dict, other: Authority) -> None:
    _drop_set(bundle)
    _restamp_by(bundle, other)


def _drop_set_and_timestamps(bundle: dict, other: Authority) -> None:
    _drop_set(bundle)
    _drop_timestamps(bundle)


def _forge_checkpoint_(bundle: dict, other: Authority) -> None:
    _forge_checkpoint(bundle)


NO_TIME = "bundle must contain an inclusion promise or signed timestamp(s)"
REFUSALS: dict[str, tuple[str, Callable[[dict, Authority], None], str]] = {
    "v2-stamp-from-an-unknown-tsa": ("v2", _restamp_by, "not enough sources of verified time"),
    "v1-without-set-stamp-from-an-unknown-tsa": ("local", _drop_set_and_restamp, "not enough sources of verified time"),
    "v2-checkpoint-signed-by-another-key": ("v2", _forge_checkpoint_, "checkpoint: invalid signature"),
    "v2-without-timestamp": ("v2", _drop_timestamps, NO_TIME),
    "v1-without-set-and-timestamp": ("local", _drop_set_and_timestamps, NO_TIME),
}


def _small_model() -> bytes:
    import io

    import joblib
    import numpy as np
    from sklearn.dummy import DummyClassifier

    buffer = io.BytesIO()
    joblib.dump(DummyClassifier().fit(np.zeros((4, 1)), [0, 1, 0, 1]), buffer)
    return buffer.getvalue()


SMALL_MODEL = _small_model()


def _signed(models_root: Path, name: str, signer: Authority) -> tuple[str, Path]:
    artefact = put(models_root, name, SMALL_MODEL, signer)
    return artefact, models_root / f"{artefact}.sigstore.json"


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bundle_without_a_trusted_time_is_refused(time_loader: LoaderProcess, models_root: Path, authority: Authority, v2_authority: Authority, other_authority: Authority, case: str) -> None:
    trust_root, mutate, words = REFUSALS[case]
    signer = v2_authority if trust_root == "v2" else authority
    artefact, bundle_path = _signed(models_root, f"time-{case}", signer)
    # The untouched bundle loads: the refusal below is the mutation's doing.
    call(time_loader, artefact, signer, trust_root=trust_root)
    bundle = _bundle(bundle_path)
    mutate(bundle, other_authority)
    bundle_path.write_text(json.dumps(bundle))
    error = refused(time_loader, artefact, signer, trust_root=trust_root)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert words in error.details(), error.details()


@pytest.mark.parametrize(("case", "mutate"), [("only-the-timestamp", _drop_timestamps), ("only-the-set", _drop_set)])
def test_a_v1_bundle_keeps_one_time_source_when_the_other_is_removed(time_loader: LoaderProcess, models_root: Path, authority: Authority, case: str, mutate: Callable[[dict], None]) -> None:
    """Each source alone suffices: the SET's integrated time, or the TSA's signed time."""
    artefact, bundle_path = _signed(models_root, f"time-v1-without-{case}", authority)
    bundle = _bundle(bundle_path)
    mutate(bundle)
    bundle_path.write_text(json.dumps(bundle))
    header, _ = call(time_loader, artefact, authority)
    assert header.facts.identity == SIGNER


def test_the_cli_refuses_a_v2_bundle_whose_timestamp_is_from_an_unknown_tsa(v2_authority: Authority, other_authority: Authority, tmp_path: Path) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    bundle = json.loads(v2_authority.sign_bytes(artefact.read_bytes(), EMAIL))
    _restamp_by(bundle, other_authority)
    bundle_path = tmp_path / "model.joblib.sigstore.json"
    bundle_path.write_text(json.dumps(bundle))
    done = subprocess.run(
        [SIGSTORE, "--trust-config", str(v2_authority.trust_config), "verify", "identity", "--offline",
         "--cert-identity", EMAIL, "--cert-oidc-issuer", v2_authority.issuer, "--bundle", str(bundle_path), str(artefact)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "not enough sources of verified time" in done.stderr


# --- the TSA and the v2 log on their own --------------------------------------------------------


def test_the_tsa_answers_rfc3161_with_the_nonce_and_its_certificate(authority: Authority, other_authority: Authority) -> None:
    message = b"any signature bytes"
    request = TimestampRequestBuilder().data(message).nonce(nonce=True).build()
    answer = requests.post(authority.server.url + TSA_PATH, data=request.as_bytes(), timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/timestamp-reply"
    response = decode_timestamp_response(answer.content)
    assert response.tst_info.nonce == request.nonce
    verifier = _tsa_verifier(authority.trust_config)
    assert verifier.verify_message(response, message)
    with pytest.raises(TimestampVerificationError, match="Mismatch between messages"):
        verifier.verify_message(response, b"other bytes")
    with pytest.raises(TimestampVerificationError):
        _tsa_verifier(other_authority.trust_config).verify_message(response, message)


def test_the_tsa_rejects_a_malformed_request_with_a_reason(authority: Authority) -> None:
    answer = requests.post(authority.server.url + TSA_PATH, data=b"not DER", timeout=10)
    assert answer.status_code == 400
    assert decode_timestamp_response(answer.content).status == 2  # PKIStatus rejection
    assert b"not a DER TimeStampReq" in answer.content  # its status string


def test_a_v1_authority_refuses_v2_entries_with_a_hint(authority: Authority) -> None:
    answer = requests.post(authority.server.url + "/api/v2/log/entries", json={"hashedRekordRequestV002": {}}, timeout=10)
    assert answer.status_code == 404
    assert "--rekor-version 2" in answer.json()["message"]


def test_the_v2_log_refuses_a_signature_that_does_not_verify(v2_authority: Authority) -> None:
    bundle = json.loads(v2_authority.sign_bytes(b"x"))
    body = json.loads(base64.b64decode(_entry(bundle)["canonicalizedBody"]))["spec"]["hashedRekordV002"]
    request = {"hashedRekordRequestV002": {"digest": base64.b64encode(b"\x00" * 32).decode(), "signature": body["signature"]}}
    answer = requests.post(v2_authority.server.url + "/api/v2/log/entries", json=request, timeout=10)
    assert answer.status_code == 400
    assert "does not verify" in answer.json()["message"]


def test_the_v2_log_and_its_bundles_survive_a_restart(tmp_path: Path) -> None:
    first = start_authority(tmp_path / "ca", rekor_version=2)
    before = [first.sign_bytes(f"model {i}".encode()) for i in range(3)]
    first.server.shutdown()
    first.server.server_close()
    state = AuthorityState.load(tmp_path / "ca")
    assert len(TileLog(state)) == 3
    again = AuthorityServer(state)
    again.start_background()
    try:
        after = json.loads(Authority(state, again).sign_bytes(b"model 3"))
        assert _entry(after)["logIndex"] == "3"
        assert _entry(after)["inclusionProof"]["treeSize"] == "4"
        # The old bundles still verify after the restart, against the rewritten trust config.
        from sigstore.models import Bundle
        from sigstore.verify import Verifier
        from sigstore.verify.policy import Identity

        verifier = Verifier(trusted_root=ClientTrustConfig.from_json((tmp_path / "ca" / "trust_config.json").read_text()).trusted_root)
        for i, raw in enumerate(before):
            verifier.verify_artifact(f"model {i}".encode(), Bundle.from_json(raw), Identity(identity=SIGNER, issuer=state.issuer))
    finally:
        again.shutdown()
        again.server_close()


def test_dsse_is_logged_as_hashedrekord_over_the_pae_in_v2(v2_authority: Authority, tmp_path: Path) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"attested model")
    bundle = tmp_path / "model.joblib.sigstore.json"
    predicate = tmp_path / "provenance.json"
    predicate.write_text(json.dumps({
        "buildDefinition": {"buildType": "https://example.com/train", "externalParameters": {}},
        "runDetails": {"builder": {"id": "https://example.com/pipeline"}},
    }))
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run(
        [SIGSTORE, "--trust-config", str(v2_authority.trust_config), "attest", "--predicate-type",
         "https://slsa.dev/provenance/v1", "--predicate", str(predicate), "--identity-token",
         v2_authority.token(EMAIL), "--bundle", str(bundle), str(artefact)],
        check=True, capture_output=True, timeout=60, env=env,
    )
    doc = _bundle(bundle)
    assert "dsseEnvelope" in doc and _entry(doc)["kindVersion"] == {"kind": "hashedrekord", "version": "0.0.2"}
    done = subprocess.run(
        [SIGSTORE, "--trust-config", str(v2_authority.trust_config), "verify", "identity", "--offline",
         "--cert-identity", EMAIL, "--cert-oidc-issuer", v2_authority.issuer, "--bundle", str(bundle), str(artefact)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr
