"""Trust-root lifecycle: `python -m loader trust show`, replacing the pinned production root with
`--trust-config production=FILE`, and rotating a log key in a copy of a root."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from authority._crypto import b64, key_id, new_key, save_key, spki_der
from authority.server import AuthorityServer
from authority.state import AuthorityState
from tests.support import PYTHON, SIGNER, Authority, call, put, start_loader, stop_process


def _loader_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "loader", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _show(*args: str, cwd: Path) -> list[dict]:
    done = _loader_cli("trust", "show", "--json", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_pinned_production_root_lists_rekor_v1_and_v2_and_its_tsa(tmp_path: Path) -> None:
    done = _loader_cli("trust", "show", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("trust root 'production': ")
    assert any(line.split()[:3] == ["Rekor", "v1", "https://rekor.sigstore.dev"] for line in lines), done.stdout
    assert any(line.split()[:3] == ["Rekor", "v2", "https://log2025-1.rekor.sigstore.dev"] for line in lines), done.stdout
    assert any(line.split()[:2] == ["TSA", "https://timestamp.sigstore.dev/api/v1/timestamp"] for line in lines), done.stdout
    # Retired keys stay listed (they verify old bundles) and are marked so.
    assert any("ctfe.sigstore.dev/test" in line and "retired" in line for line in lines), done.stdout


def test_production_file_replaces_the_pinned_root(tmp_path: Path, authority: Authority, models_root: Path) -> None:
    (report,) = _show(f"--trust-config=production={authority.trust_config}", cwd=tmp_path)
    assert report["name"] == "production" and report["path"] == str(authority.trust_config)
    kinds = sorted({item["kind"] for item in report["items"]})
    assert kinds == ["CT log", "Fulcio CA", "Rekor v1", "TSA"]
    assert not any("sigstore.dev" in item["name"] for item in report["items"])

    # The loader then verifies against the file under the name `production`.
    artefact = put(models_root, "replaced-production", _small_model(), authority)
    loader = start_loader(
        tmp_path, models_root, {"production": authority.trust_config, "local": authority.trust_config}, sock=tmp_path / "p.sock"
    )
    try:
        header, _ = call(loader, artefact, authority, trust_root="production")
        assert header.facts.trust_root == "production" and header.facts.identity == SIGNER
    finally:
        stop_process(loader.process)


def test_what_ends_soon_is_flagged(tmp_path: Path, authority: Authority) -> None:
    root = json.loads(authority.trust_config.read_text())["trustedRoot"]
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    root["timestampAuthorities"][0]["validFor"]["end"] = soon
    path = tmp_path / "trusted_root.json"
    path.write_text(json.dumps(root))
    done = _loader_cli("trust", "show", f"--trust-config=soon={path}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tsa_line = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["TSA"] and "127.0.0.1" in line)
    assert "EXPIRES IN 9 DAYS" in tsa_line or "EXPIRES IN 10 DAYS" in tsa_line, tsa_line
    assert "1 item(s) expire within 30 days" in done.stdout
    quiet = _loader_cli("trust", "show", f"--trust-config=soon={path}", "--warn-days=5", cwd=tmp_path)
    assert "nothing in use expires within 5 days" in quiet.stdout


def test_a_file_that_is_not_a_root_fails_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "root.json"
    bad.write_text('{"mediaType": "nope"}')
    done = _loader_cli("trust", "show", f"--trust-config=site={bad}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("FAIL: trust root 'site': ") and str(bad) in done.stderr


# --- rotation ----------------------------------------------------------------------------------


def _small_model() -> bytes:
    import io

    import joblib
    import numpy as np
    from sklearn.dummy import DummyClassifier

    buffer = io.BytesIO()
    joblib.dump(DummyClassifier().fit(np.zeros((4, 1)), [0, 1, 0, 1]), buffer)
    return buffer.getvalue()


@pytest.fixture()
def rotated(authority: Authority, tmp_path: Path) -> Iterator[Authority]:
    """The session authority after a Rekor key rotation: same CA, CT log and TSA, a new log key."""
    directory = tmp_path / "rotated"
    shutil.copytree(authority.state.directory, directory)
    (directory / "log" / "entries.jsonl").unlink(missing_ok=True)  # a new log starts empty
    save_key(new_key(), directory / "keys" / "rekor.key")
    server = AuthorityServer(AuthorityState.load(directory))
    server.start_background()
    yield Authority(server.state, server)
    server.shutdown()


def _rotated_root(old: Authority, new: Authority, path: Path) -> Path:
    """A copy of the old root that retires the old log key now and adds the new one."""
    root = json.loads(old.trust_config.read_text())["trustedRoot"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (old_log,) = root["tlogs"]
    old_log["publicKey"]["validFor"]["end"] = now
    new_key_public = new.state.rekor_key.public_key()
    new_log = json.loads(json.dumps(old_log))
    new_log["publicKey"]["rawBytes"] = b64(spki_der(new_key_public))
    new_log["publicKey"]["validFor"] = {"start": old_log["publicKey"]["validFor"]["start"]}
    new_log["logId"]["keyId"] = b64(key_id(new_key_public))
    root["tlogs"].append(new_log)
    path.write_text(json.dumps(root, indent=2))
    return path


def _verify(root: Path, artefact: Path, cwd: Path) -> subprocess.CompletedProcess:
    return _loader_cli(
        "verify", "--trust-config", str(root), "--cert-identity", SIGNER, "--cert-oidc-issuer",
        "https://oidc.sigstore.local", str(artefact), cwd=cwd,
    )


def test_a_rotated_root_verifies_bundles_from_before_and_after_the_rotation(authority: Authority, rotated: Authority, tmp_path: Path) -> None:
    before, after = tmp_path / "before.joblib", tmp_path / "after.joblib"
    for path, signer in ((before, authority), (after, rotated)):
        path.write_bytes(path.name.encode())
        signer.sign_file(path)
    old_root = tmp_path / "old_root.json"
    old_root.write_text(json.dumps(json.loads(authority.trust_config.read_text())["trustedRoot"]))
    new_root = _rotated_root(authority, rotated, tmp_path / "rotated_root.json")

    assert _verify(old_root, before, tmp_path).returncode == 0
    refused = _verify(old_root, after, tmp_path)
    assert refused.returncode == 1 and "checkpoint" in refused.stderr, refused.stderr
    for artefact in (before, after):
        done = _verify(new_root, artefact, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"OK: {artefact}")

    (report,) = _show(f"--trust-config=production={new_root}", cwd=tmp_path)
    logs = [item for item in report["items"] if item["kind"] == "Rekor v1"]
    assert [log["status"] for log in logs] == ["retired", "active"]
    new_id = base64.b64encode(key_id(rotated.state.rekor_key.public_key())).decode()
    assert new_id in logs[1]["detail"]
