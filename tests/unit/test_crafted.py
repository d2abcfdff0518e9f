"""Every attack category of issue 17 is refused at load, with its reason (archives: tests/crafted.py)."""

from __future__ import annotations

import tracemalloc

import pytest

from runtime.errors import ModelRefused
from runtime.safe_load import load_model
from tests.crafted import CASES
from tests.support import memfd_file

EXPANDED = 48 << 20


@pytest.mark.parametrize("source", ["bytes", "file"])
@pytest.mark.parametrize("category", sorted(CASES))
def test_each_crafted_category_is_refused_with_its_reason(category: str, source: str) -> None:
    case = CASES[category]
    data = case.build()
    tracemalloc.start()
    try:
        with pytest.raises(ModelRefused, match=case.refusal) as refused:
            if source == "bytes":
                load_model(data, [])
            else:  # as the runtime reads the passed memfd: arrays are read in place
                with memfd_file(data) as file:
                    load_model(file, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status_code == 422
    # Refusal is cheap: the archive is never expanded. Counted in bytes allocated, not seconds
    # (the bombs expand to 64 MiB and more; the largest honest refusal allocates about 22 MiB).
    assert peak < EXPANDED, f"refusing allocated {peak >> 20} MiB"


def test_each_crafted_category_has_a_positive_control() -> None:
    """The controls run in tests/integration/test_fuzz.py; here only that none is missing: an
    outcome (with a `show` control where the outcome alone proves nothing), or `harmless` with why."""
    missing = sorted(name for name, case in CASES.items() if not case.unchecked)
    assert not missing, f"crafted archives without a positive control: {missing}"
    shows = sorted(name for name, case in CASES.items() if (case.unchecked == "shown") != (case.show is not None))
    assert not shows, f"a 'shown' outcome needs a show control, and a show control that outcome: {shows}"
    unexplained = sorted(name for name, case in CASES.items() if case.unchecked in ("predict-error", "load-error") and not case.harmless and not case.evidence)
    assert not unexplained, f"controls that show only an error, without the evidence or why no harm is possible: {unexplained}"
