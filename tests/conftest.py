"""Shared fixtures: a running local authority that signs in process, Docker gating, tiers.

Tiers come from the folder a test lives in: tests/unit, tests/integration, tests/container,
tests/e2e (markers of the same names). Helpers live in tests/support.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, TIERS, Authority, digits_svm_dump, docker_available, start_authority


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    auth = start_authority(tmp_path_factory.mktemp("authority"))
    yield auth
    auth.server.shutdown()


@pytest.fixture(scope="session")
def other_authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    """A second, unrelated authority: its bundles must not verify under the first's root."""
    auth = start_authority(tmp_path_factory.mktemp("other-authority"))
    yield auth
    auth.server.shutdown()


@pytest.fixture(scope="session")
def digits_svm_bytes() -> bytes:
    return digits_svm_dump()


@pytest.fixture(scope="session")
def docker_required() -> None:
    """Container and e2e tests fail (not skip) without Docker when CI=true."""
    if docker_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Docker is required for this tier and CI=true: run scripts/setup.sh first")
    pytest.skip("Docker is not available (run scripts/setup.sh); CI=true turns this into a failure")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """One line per tier, so a run shows that the container and e2e tiers executed."""
    counts: dict[str, dict[str, int]] = {tier: {} for tier in TIERS}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            parts = Path(str(report.fspath)).parts if hasattr(report, "fspath") else ()
            tier = next((t for t in TIERS if t in parts), None)
            if tier and getattr(report, "when", "call") in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                counts[tier][outcome] = counts[tier].get(outcome, 0) + 1
    terminalreporter.write_sep("-", "tiers")
    for tier, by_outcome in counts.items():
        summary = ", ".join(f"{n} {o}" for o, n in sorted(by_outcome.items())) or "nothing ran"
        terminalreporter.write_line(f"{tier:12s} {summary}")
