#!/usr/bin/env python3
"""Long mutation-fuzzing run of the serving-side safe load (issue 17).

Mutates honest skops dumps of every allowlisted family (tests/fuzz_cases.py) and loads + predicts
each sample in a forked child under memory and CPU limits (tests/fuzz_worker.py). Prints counts by
outcome and every finding (crash, hang, memory blow-up, unexpected load error), and saves each
finding's archive under --out.

    .venv/bin/python scripts/fuzz.py --samples 10000 --seed 1 --workers 2
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz_cases import honest_models, mutate  # noqa: E402
from tests.fuzz_worker import run_samples  # noqa: E402

HARMFUL = ("signal", "timeout", "memory", "load-error")


def _shard(worker: int, workers: int, samples: int, seed: int, out: Path, counts: Counter, findings: list, lock: threading.Lock) -> None:
    rng = random.Random(seed * 1000 + worker)
    honest = honest_models()
    current: list = []

    def generate():  # one sample at a time: a long run never holds its samples in memory
        for i in range(worker, samples, workers):
            model = honest[i % len(honest)]
            data, what = mutate(model.data, rng)
            current[:] = [i, model, what, data]
            yield data, model.input

    for result in run_samples(generate()):
        i, model, what, data = current
        with lock:
            counts[result["outcome"]] += 1
            done = sum(counts.values())
            if done % 1000 == 0:
                print(f"{done} samples: {dict(counts)}", flush=True)
            if result["outcome"] in HARMFUL:
                path = out / f"finding-{i}-{model.name}.skops"
                path.write_bytes(data)
                findings.append((i, model.name, what, result, path))
                print(f"FINDING {i} {model.name}: {what}: {result}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlserver-sigstore-fuzz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    findings: list = []
    lock = threading.Lock()
    started = time.monotonic()
    threads = [
        threading.Thread(target=_shard, args=(w, args.workers, args.samples, args.seed, args.out, counts, findings, lock))
        for w in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"{total} samples in {elapsed:.0f} s (seed {args.seed}, {len(honest_models())} honest models)")
    for outcome, n in counts.most_common():
        print(f"  {outcome:14s} {n}")
    print(f"{len(findings)} findings" + (f", archives in {args.out}" if findings else ""))
    return 1 if findings or total != args.samples else 0


if __name__ == "__main__":
    sys.exit(main())
