"""The documented CLIs: `python -m loader {verify,load,health}` and the authority's GET endpoints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests
import skops.io

from tests.support import PYTHON, ROOT, SIGNER, Authority, LoaderProcess, put


def _loader_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "loader", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_verify_says_ok_or_fail_with_exit_codes(authority: Authority, tmp_path: Path) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    authority.sign_file(artefact)
    common = ["verify", "--trust-config", str(authority.trust_config), "--cert-oidc-issuer", authority.issuer]
    ok = _loader_cli(*common, "--cert-identity", SIGNER, str(artefact))
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK: {artefact}") and SIGNER in ok.stdout
    wrong = _loader_cli(*common, "--cert-identity", "mallory@example.com", "--bundle", f"{artefact}.sigstore.json", str(artefact))
    assert wrong.returncode == 1 and "signer policy failed" in wrong.stderr
    artefact.write_bytes(b"model!")
    tampered = _loader_cli(*common, "--cert-identity", SIGNER, str(artefact))
    assert tampered.returncode == 1 and "digest mismatch" in tampered.stderr


def test_load_and_health_against_a_running_loader(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    health = _loader_cli("health", "--endpoint", loader.endpoint)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"
    details = _loader_cli("health", "--details", "--endpoint", loader.endpoint)
    lines = details.stdout.splitlines()
    assert details.returncode == 0 and lines[0] == "SERVING", details.stderr
    # This kernel has Landlock: the details say it is enforced (elsewhere: "unavailable (...)").
    assert any(line.strip().startswith("landlock: ABI ") and line.endswith("enforced") for line in lines), lines
    assert any(line.strip().startswith("seccomp: default-deny") for line in lines), lines
    assert "'local'" in details.stdout and f"{loader.socket}.fd" in details.stdout
    artefact = put(models_root, "cli-load", digits_svm_bytes, authority)
    out = tmp_path / "model.skops"
    loaded = _loader_cli("load", "--endpoint", loader.endpoint, "--cert-identity", SIGNER, "--cert-oidc-issuer", authority.issuer, "--out", str(out), artefact)
    assert loaded.returncode == 0, loaded.stderr
    assert "wrote" in loaded.stdout and skops.io.loads(out.read_bytes(), trusted=[]).__class__.__name__ == "SVC"
    refused = _loader_cli("load", "--endpoint", loader.endpoint, "--cert-identity", "x@example.com", "--cert-oidc-issuer", authority.issuer, "--out", str(out), artefact)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    down = _loader_cli("health", "--endpoint", f"unix://{tmp_path}/none.sock", "--timeout", "1")
    assert down.returncode == 1


def test_authority_serves_lookups_discovery_and_keys(authority: Authority) -> None:
    authority.sign_bytes(b"look me up")
    info = requests.get(f"{authority.server.url}/api/v1/log", timeout=10).json()
    assert info["treeSize"] >= 1 and "\u2014" in info["signedTreeHead"]
    by_index = requests.get(f"{authority.server.url}/api/v1/log/entries", params={"logIndex": 0}, timeout=10).json()
    uuid, entry = next(iter(by_index.items()))
    assert entry["logIndex"] == 0 and entry["verification"]["inclusionProof"]["treeSize"] == info["treeSize"]
    by_uuid = requests.get(f"{authority.server.url}/api/v1/log/entries/{uuid}", timeout=10).json()[uuid]
    # Signatures (SET, checkpoint) are fresh ECDSA signatures each time; the entry is the same.
    assert {k: by_uuid[k] for k in ("body", "integratedTime", "logIndex")} == {k: entry[k] for k in ("body", "integratedTime", "logIndex")}
    assert requests.get(f"{authority.server.url}/api/v1/log/entries/{'0' * 64}", timeout=10).status_code == 404
    assert requests.get(f"{authority.server.url}/api/v1/log/entries", params={"logIndex": 10**6}, timeout=10).status_code == 404
    discovery = requests.get(f"{authority.server.url}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == authority.issuer
    keys = requests.get(discovery["jwks_uri"], timeout=10).json()["keys"]
    assert keys[0]["kid"] == authority.state.oidc_kid and keys[0]["crv"] == "P-256"


def test_authority_cli_init_and_token(tmp_path: Path) -> None:
    init = subprocess.run([PYTHON, "-m", "authority", "init", str(tmp_path / "ca")], capture_output=True, text=True, timeout=60)
    assert init.returncode == 0 and (tmp_path / "ca" / "trust_config.json").exists()
    again = subprocess.run([PYTHON, "-m", "authority", "init", str(tmp_path / "ca")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already holds an authority" in again.stderr
    token = subprocess.run([PYTHON, "-m", "authority", "token", str(tmp_path / "ca"), "--email", "a@example.com"], capture_output=True, text=True, timeout=60)
    assert token.returncode == 0 and token.stdout.count(".") == 2
    missing = subprocess.run([PYTHON, "-m", "authority", "token", str(tmp_path / "nope"), "--email", "a@example.com"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "not an initialised authority" in missing.stderr


def test_prometheus_metrics_count_verdicts(tmp_path: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    from tests.support import call, free_port, refused, start_loader, stop_process

    port = free_port()
    models = tmp_path / "models"
    models.mkdir()
    proc = start_loader(tmp_path, models, {"local": authority.trust_config}, f"--metrics-port={port}")
    try:
        artefact = put(models, "metrics", digits_svm_bytes, authority)
        call(proc, artefact, authority)
        refused(proc, artefact, authority, identity="mallory@example.com")
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop_process(proc.process)
    assert 'loader_verifications_total{result="loaded"} 1.0' in text
    assert 'loader_verifications_total{result="permission_denied"} 1.0' in text
    assert "loader_load_seconds_count 2.0" in text


def test_server_reflection_lists_the_services(loader: LoaderProcess) -> None:
    """What grpcurl relies on: the loader describes itself over reflection."""
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(loader.endpoint) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"loader.v1.Loader", "grpc.health.v1.Health"} <= services


def test_verify_finds_a_sigstore_1x_bundle_and_a_directory_model_sig(authority: Authority, tmp_path: Path) -> None:
    """One bundle rule for the CLI and the service: `<file>.sigstore` (sigstore 1.x) is found too."""
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    bundle = authority.sign_file(artefact)
    bundle.rename(tmp_path / "model.joblib.sigstore")
    common = ["verify", "--trust-config", str(authority.trust_config), "--cert-oidc-issuer", authority.issuer]
    found = _loader_cli(*common, "--cert-identity", SIGNER, str(artefact))
    assert found.returncode == 0, found.stderr
    missing = _loader_cli(*common, "--cert-identity", SIGNER, str(tmp_path / "other.joblib"))
    assert missing.returncode == 1 and "other.joblib.sigstore.json" in missing.stderr and "model.sig" in missing.stderr


def test_verify_and_load_take_a_model_directory_with_identity_patterns(loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    model = models_root / "cli-directory"
    model.mkdir()
    (model / "model.joblib").write_bytes(digits_svm_bytes)
    (model / "labels.json").write_text("[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
    signed = subprocess.run(
        [str(Path(PYTHON).with_name("model_signing")), "sign", "sigstore", "--trust_config", str(authority.trust_config),
         "--identity_token", authority.token(), "--signature", str(model / "model.sig"), str(model)],
        capture_output=True, text=True, timeout=120,
    )
    assert signed.returncode == 0, signed.stderr
    pattern = ["--cert-identity-regexp", r"model-pipeline@example\.(com|org)", "--cert-oidc-issuer", authority.issuer]
    ok = _loader_cli("verify", "--trust-config", str(authority.trust_config), *pattern, str(model))
    assert ok.returncode == 0, ok.stderr
    assert "2 files verified" in ok.stdout
    (model / "notes.txt").write_text("added after signing")
    added = _loader_cli("verify", "--trust-config", str(authority.trust_config), *pattern, str(model))
    assert added.returncode == 1 and "not covered by the signature: notes.txt" in added.stderr
    out = tmp_path / "model.skops"
    loaded = _loader_cli("load", "--endpoint", loader.endpoint, *pattern, "--ignore-path", "notes.txt", "--trusted-type", "numpy.dtype", "--out", str(out), "cli-directory")
    assert loaded.returncode == 0, loaded.stderr
    assert skops.io.loads(out.read_bytes(), trusted=[]).__class__.__name__ == "SVC"
    prefix = _loader_cli("load", "--endpoint", loader.endpoint, "--cert-identity-regexp", "model-pipeline", "--cert-oidc-issuer", authority.issuer, "--ignore-path", "notes.txt", "--out", str(out), "cli-directory")
    assert prefix.returncode == 1 and "PERMISSION_DENIED" in prefix.stderr and "model-pipeline@example.com" in prefix.stderr


def test_verify_refuses_signer_flags_of_two_kinds_naming_the_field(tmp_path: Path) -> None:
    """`--key` with keyless flags was read as the key alone, the others dropped without a word:
    a signer is of one kind, from the CLI as from a policy."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = tmp_path / "release.pub"
    public.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    alone = _loader_cli("verify", "--key", str(public), str(artefact))
    assert alone.returncode == 1 and "found no bundle" in alone.stderr, alone.stderr  # the key alone is a signer
    mixed = _loader_cli("verify", "--key", str(public), "--cert-identity", SIGNER, "--cert-oidc-issuer", "https://i", str(artefact))
    assert mixed.returncode == 2, mixed.stderr
    assert "policy.identity: applies to Sigstore keyless signers only, but this signer sets key" in mixed.stderr
