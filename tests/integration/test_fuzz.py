"""Crafted and mutated archives, each loaded and used in a forked child under memory and CPU limits.

The crafted archives (tests/crafted.py) are first shown to hurt a process that loads them with skops
alone, so the refusals below are refusals of real attacks. The mutation fuzzer (tests/fuzz_cases.py)
runs a bounded, seeded number of samples here; scripts/fuzz.py runs many more.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.crafted import CASES
from tests.fuzz_cases import honest_models, mutate
from tests.fuzz_worker import run_samples

CI_SAMPLES = 200
HARMFUL = {"signal", "timeout", "memory", "load-error"}
HANG_CPU_SECONDS = 3


@pytest.mark.concurrency
def test_crafted_archives_hurt_a_process_that_loads_them_with_skops_alone() -> None:
    """Every crafted archive's positive control: loaded by skops alone in a limited child, it does
    the harm it is kept for (a crash, a hang, memory, or a `show` control's evidence: a read file's
    bytes, an index proven out of range from the arrays), or, where skops or scikit-learn already
    stops it (`harmless`, with why), the control shows it stopped there."""
    missing = sorted(name for name, case in CASES.items() if not case.unchecked)
    assert not missing, f"crafted archives without a positive control: {missing}"
    # A harmless case's control shows the stop; one whose control shows harm is not harmless.
    mislabelled = {name: case.unchecked for name, case in CASES.items() if case.harmless and case.unchecked not in ("predict-error", "load-error")}
    assert not mislabelled, mislabelled
    def samples(names: list[str]) -> Iterator[tuple[bytes, str, str, str]]:
        return ((CASES[n].build(), CASES[n].input, CASES[n].touch, f"show={n}" if CASES[n].show else "") for n in names)
    # A hang shows as CPU time past a budget an honest model of its kind never nears (loads and
    # predicts take well under a CPU second); the other controls get ample CPU: no verdict here
    # depends on how busy the machine is.
    hangs = sorted(name for name, case in CASES.items() if case.unchecked == "timeout")
    others = sorted(name for name in CASES if name not in hangs)
    results = dict(zip(hangs, run_samples(samples(hangs), unchecked=True, cpu=HANG_CPU_SECONDS), strict=True))
    results |= dict(zip(others, run_samples(samples(others), unchecked=True, cpu=60), strict=True))
    # `unchecked` may name alternatives ("signal|load-error") where the heap decides how it shows.
    unharmed = {
        name: result for name, result in results.items()
        if not re.fullmatch(CASES[name].unchecked, result["outcome"]) or not re.search(CASES[name].evidence, result["detail"])
    }
    assert not unharmed, f"crafted archives that did not do the harm they are kept for: {unharmed}"


def test_crafted_archives_are_refused_in_a_limited_child() -> None:
    results = list(run_samples(((case.build(), case.input) for case in CASES.values()), cpu=60))
    outcomes = {name: result["outcome"] for name, result in zip(CASES, results, strict=True)}
    assert outcomes == dict.fromkeys(CASES, "refused")
    # ... for their own reason (a check that ran out of memory, say, is not one).
    wrong = {name: r["detail"] for name, r in zip(CASES, results, strict=True) if not re.search(CASES[name].refusal, r["detail"])}
    assert not wrong, wrong


@pytest.mark.parametrize("seed", [17])
def test_mutated_dumps_never_crash_hang_or_exhaust_the_loading_process(seed: int) -> None:
    rng = random.Random(seed)
    honest = honest_models()
    samples = []
    for i in range(CI_SAMPLES):
        model = honest[i % len(honest)]
        data, what = mutate(model.data, rng)
        samples.append((model.name, what, data, model.input))
    results = list(run_samples((data, key) for _, _, data, key in samples))
    findings = [(name, what, r) for (name, what, _, _), r in zip(samples, results, strict=True) if r["outcome"] in HARMFUL]
    counts = Counter(r["outcome"] for r in results)
    assert not findings, f"{counts}: {findings[:5]}"
    # The fuzzer must reach past the pre-scan: some samples load and predict.
    assert counts["ok"] + counts["predict-error"] > CI_SAMPLES // 10, counts
