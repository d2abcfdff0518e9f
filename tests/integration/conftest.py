"""Integration fixtures: a loader process over real gRPC (helpers to call it: tests/support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Authority, LoaderProcess, start_loader, stop_process


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority, other_authority: Authority) -> Iterator[LoaderProcess]:
    proc = start_loader(
        tmp_path_factory.mktemp("loader"),
        models_root,
        {"local": authority.trust_config, "other": other_authority.trust_config},
        # CPU time is the binding limit (a busy host does not change it); the wall limit is far
        # above any honest load's, so a slow machine never turns an honest load into a refusal.
        "--child-wall-seconds=120", "--child-cpu-seconds=3", "--child-memory-mb=256", "--max-concurrent-loads=2",
    )
    yield proc
    stop_process(proc.process)
