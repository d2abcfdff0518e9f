"""Runs fuzz samples: one forked, resource-limited child per sample that loads it and predicts.

`python -m tests.fuzz_worker [--unchecked] [--wall S] [--cpu S]` reads `SAMPLE_PATH INPUT_KEY [ATTRIBUTE]
[show=CASE]` lines on stdin (ATTRIBUTE: read right after an unchecked load, as a landed validator
did; CASE: a tests/crafted.py case whose `show` control runs on the loaded model instead of the
predict calls, or instead of the load where the case is `at_load`) and answers one JSON line per sample: outcome (ok, refused, predict-error,
load-error, memory, signal, timeout, shown, unshown) and detail. --unchecked loads with skops alone
(what the server did before issue 17), to show that crafted archives really hurt.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import skops.io  # noqa: E402

from runtime.errors import ModelRefused  # noqa: E402
from runtime.safe_load import load_model  # noqa: E402
from tests.crafted import CASES  # noqa: E402
from tests.fuzz_cases import INPUTS  # noqa: E402

MEMORY_HEADROOM = 1 << 30
CPU_SECONDS = 10
# A hang is decided by CPU time (RLIMIT_CPU: SIGXCPU), which a busy machine does not change; the
# wall deadline is only a safety net for a sample that blocks without spending CPU.
WALL_SECONDS = 600.0
METHODS = ("predict", "predict_proba", "decision_function", "transform")
CODES = {0: "ok", 10: "refused", 11: "predict-error", 12: "memory", 13: "load-error", 14: "shown", 15: "unshown"}


def _virtual_size() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(path: str, key: str, unchecked: bool, report: int, touch: str = "", show: str = "", cpu: int = CPU_SECONDS) -> int:
    # stdout is the worker's answer channel: a model that prints (a `verbose` flag the mutation
    # set, say) must not corrupt it.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    limit = _virtual_size() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    warnings.simplefilter("ignore")
    data = b""
    if unchecked and show and CASES[show].at_load:
        # The harm is in skops' build: the control watches the load itself.
        with open(path, "rb") as sample:
            return _show(show, None, sample.read(), INPUTS[key], report)
    try:
        if unchecked:
            with open(path, "rb") as sample:
                data = sample.read()
            model = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
            if touch:
                getattr(model, touch)
        else:
            # From a file, as the runtime reads the passed memfd (arrays are read in place).
            with open(path, "rb") as sample:
                model = load_model(sample, [])
    except ModelRefused as exc:
        os.write(report, str(exc)[:400].encode())
        # A refusal because checking ran out of memory is memory harm, not a refusal.
        return 12 if "MemoryError" in str(exc) else 10
    except MemoryError:
        return 12
    except skops.io.exceptions.UntrustedTypesFoundException as exc:
        os.write(report, str(exc)[:400].encode())
        return 10
    except Exception as exc:  # noqa: BLE001 - any other load failure is a finding of its own
        # Unchecked, skops itself failing on what it read (a state it indexed past its end,
        # say) is harm: how it shows depends on the bytes beside what it read.
        os.write(report, f"{type(exc).__name__}: {exc}"[:400].encode())
        return 13
    x = INPUTS[key]
    if show:
        return _show(show, model, data, x, report)
    failed = ""
    for method in METHODS:
        try:
            if hasattr(model, method):
                getattr(model, method)(x)
        except MemoryError:
            return 12
        except Exception as exc:  # noqa: BLE001 - a Python error at predict is a harmless 4xx/5xx
            failed = f"{method}: {type(exc).__name__}: {exc}"[:400]
    os.write(report, failed.encode())
    return 11 if failed else 0


def _show(case: str, model: object, data: bytes, x: object, report: int) -> int:
    """The case's positive control on the model skops alone built: "shown" with its evidence, or
    "unshown" with why not."""
    control = CASES[case].show
    assert control is not None, f"{case} has no show control"
    try:
        evidence = control(model, data, x)
    except MemoryError:
        return 12
    except Exception as exc:  # noqa: BLE001 - a control that cannot show its harm says why
        os.write(report, f"{type(exc).__name__}: {exc}"[:400].encode())
        return 15
    os.write(report, evidence[:400].encode())
    return 14


def run_one(path: str, key: str, unchecked: bool, wall: float = WALL_SECONDS, touch: str = "", show: str = "", cpu: int = CPU_SECONDS) -> dict[str, str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 13
        try:
            code = _child(path, key, unchecked, write, touch, show, cpu)
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + wall
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return {"outcome": "timeout", "detail": f"over {wall:g} s"}
        else:
            time.sleep(0.002)
    with os.fdopen(read, "rb") as pipe:
        detail = pipe.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        outcome = "timeout" if sig in (signal.SIGXCPU, signal.SIGKILL) else "signal"
        return {"outcome": outcome, "detail": signal.Signals(sig).name}
    return {"outcome": CODES.get(os.WEXITSTATUS(status), "load-error"), "detail": detail}


def main() -> None:
    unchecked = "--unchecked" in sys.argv
    wall = float(sys.argv[sys.argv.index("--wall") + 1]) if "--wall" in sys.argv else WALL_SECONDS
    cpu = int(sys.argv[sys.argv.index("--cpu") + 1]) if "--cpu" in sys.argv else CPU_SECONDS
    for line in sys.stdin:
        path, key, *rest = line.split()
        show = next((word.removeprefix("show=") for word in rest if word.startswith("show=")), "")
        touch = next((word for word in rest if not word.startswith("show=")), "")
        print(json.dumps(run_one(path, key, unchecked, wall, touch, show, cpu)), flush=True)


ROOT = Path(__file__).resolve().parents[1]


def run_samples(
    samples: Iterable[tuple[Any, ...]], unchecked: bool = False, wall: float = WALL_SECONDS, cpu: int = CPU_SECONDS,
) -> Iterator[dict[str, str]]:
    """Feed (skops bytes, input key[, attribute to read][, "show=CASE"]) samples to one worker
    process; yield its verdict per sample. Each sample may spend `cpu` CPU seconds."""
    args = [sys.executable, "-m", "tests.fuzz_worker", "--wall", str(wall), "--cpu", str(cpu)] + (["--unchecked"] if unchecked else [])
    with tempfile.TemporaryDirectory() as scratch, subprocess.Popen(
        args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        path = Path(scratch) / "sample.skops"
        for data, key, *extra in samples:
            path.write_bytes(data)
            worker.stdin.write(" ".join([str(path), key, *(word for word in extra if word)]) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError("the fuzz worker died")
            yield json.loads(line)
        worker.stdin.close()


if __name__ == "__main__":
    main()
