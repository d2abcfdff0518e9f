"""Every mutation of scripts/mutation_check.py still applies to the tree, exactly once.

The script refuses a stale mutation when it runs; this catches it in CI, when the code it
mutates moves, instead of on the next mutation run.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.support import ROOT

_spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
assert _spec and _spec.loader
mutation_check = importlib.util.module_from_spec(_spec)
sys.modules["mutation_check"] = mutation_check
_spec.loader.exec_module(mutation_check)


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_removes_one_defence_that_is_still_there(mutation: object) -> None:
    for edit in mutation.edits:  # type: ignore[attr-defined]
        if not edit.old:
            continue  # replaces the whole file
        text = (ROOT / edit.path).read_text()
        assert text.count(edit.old) == 1, f"{mutation.name}: {edit.path} no longer holds the text to replace"  # type: ignore[attr-defined]
        assert edit.new != edit.old


def test_mutation_names_are_unique_and_each_has_a_hostile_and_an_honest_selection() -> None:
    names = [m.name for m in mutation_check.MUTATIONS]
    assert len(names) == len(set(names))
    for m in mutation_check.MUTATIONS:
        assert m.hostile and m.honest, m.name
