"""How the loader starts: a bad trust configuration is one FAIL line, the models root is never the
launch directory by default, and the launch directory never reaches the confined child's sys.path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import hostile
from tests.support import PYTHON, SIGNER, Authority, put, refused, start_loader, stop_process


def _loader(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "loader", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _bad_trust_files(tmp_path: Path) -> dict[str, Path]:
    invalid = tmp_path / "invalid.json"
    invalid.write_text("{not json")
    not_a_root = tmp_path / "other.json"
    not_a_root.write_text('{"mediaType": "application/json"}')
    return {"missing": tmp_path / "missing.json", "invalid": invalid, "not-a-root": not_a_root}


@pytest.mark.parametrize("case", ["missing", "invalid", "not-a-root"])
def test_serve_with_a_bad_trust_config_fails_in_one_line(tmp_path: Path, case: str) -> None:
    path = _bad_trust_files(tmp_path)[case]
    done = _loader(
        "serve", f"--socket={tmp_path}/l.sock", f"--models-root={tmp_path}", f"--trust-config=site={path}", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("FAIL:")]
    assert len(lines) == 1 and lines[0].startswith("FAIL: trust root 'site': ") and str(path) in lines[0]


@pytest.mark.parametrize("case", ["missing", "invalid", "not-a-root"])
def test_verify_with_a_bad_trust_config_fails_in_one_line(tmp_path: Path, case: str) -> None:
    artefact = tmp_path / "model.joblib"
    artefact.write_bytes(b"model")
    path = _bad_trust_files(tmp_path)[case]
    done = _loader(
        "verify", f"--trust-config={path}", "--cert-identity", SIGNER, "--cert-oidc-issuer", "https://x", str(artefact),
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("FAIL: trust root ") and str(path) in done.stderr


def test_models_root_must_be_named(tmp_path: Path) -> None:
    done = _loader("serve", f"--socket={tmp_path}/l.sock", cwd=tmp_path)
    assert done.returncode == 2 and "--models-root" in done.stderr


def test_the_launch_directory_is_not_on_the_childs_sys_path(tmp_path: Path, authority: Authority) -> None:
    """Started from inside the models root, a module planted there is not importable by a payload."""
    models = tmp_path / "m"
    models.mkdir()
    (models / "planted_module.py").write_text("VALUE = 'imported from the models root'\n")
    # Positive control: without the loader, `python -m` from that folder imports the planted module.
    control = subprocess.run(
        [PYTHON, "-c", "import sys, runpy; sys.path.insert(0, ''); import planted_module; print(planted_module.VALUE)"],
        cwd=models, capture_output=True, text=True, timeout=60,
    )
    assert control.stdout.strip() == "imported from the models root", control.stderr
    probe = hostile.run_python(
        "import sys\n"
        "try:\n"
        "    import planted_module\n"
        "    found = 'IMPORTED ' + planted_module.VALUE\n"
        "except ImportError as exc:\n"
        "    found = 'NOT IMPORTED ' + type(exc).__name__\n"
        "raise RuntimeError(found + ' sys.path=' + repr(sys.path))\n"
    )
    artefact = put(models, "probe", probe, authority)
    loader = start_loader(models, models, {"local": authority.trust_config})
    try:
        details = refused(loader, artefact, authority).details()
    finally:
        stop_process(loader.process)
    assert "NOT IMPORTED ModuleNotFoundError" in details, details
    assert f"'{models}'" not in details and "''" not in details.split("sys.path=")[1], details
