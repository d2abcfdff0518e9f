"""The packages type-check (mypy, configured in pyproject.toml)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_mypy_finds_no_errors() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
