"""Hostile models that act when they predict, not when they are unpickled, with positive controls.

Unpickling one only defines a class from source carried in the pickle (exec into a namespace
the pickle memoizes, then the instance is taken out of it): nothing happens until `predict`
runs. `run_control` calls `predict` in a throwaway, unconfined process and reports what it saw;
a test asserts the technique fired there before the sandboxed run of the same bytes counts.
"""

from __future__ import annotations

import builtins
import json
import operator
import os
import pickle
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.hostile import _Reduce
from tests.support import PYTHON

ROWS = 2  # the control and the sandboxed runs predict on this many rows of 3 features


def acting_at_predict(body: str) -> bytes:
    """A pickle of an object whose `predict(self, X)` runs `body`; unpickling runs nothing else."""
    source = "import numpy as np\nclass Hostile:\n    def predict(self, X):\n" + textwrap.indent(body, " " * 8)
    source += "\nmodel = Hostile()\n"
    namespace: dict = {}
    defined = _Reduce(builtins.exec, source, namespace)
    # (exec(...), namespace)[1] is the namespace once the class is defined; ["model"] the instance.
    namespace_after = _Reduce(operator.itemgetter(1), (defined, namespace))
    return pickle.dumps(_Reduce(operator.getitem, namespace_after, "model"), protocol=4)


@dataclass(frozen=True)
class Target:
    canary: str  # a file the payload creates
    secret: str  # a file the payload reads
    port: int  # a loopback TCP listener
    bystander_pid: int  # a process of the host that is neither the payload's parent nor the loader


@dataclass
class Seen:
    """What the unconfined control saw."""

    error: str = ""
    dtype: str = ""
    shape: list[int] = field(default_factory=list)
    first: object = None
    exit_status: int | None = None
    timed_out: bool = False
    connections: int = 0
    canary: bool = False
    header: str = ""  # "nested" when the worker's framing of the answer nests past json's depth


@dataclass(frozen=True)
class PredictTechnique:
    body: Callable[[Target], str]
    fired: Callable[[Target, Seen], bool]
    status: tuple[int, ...]  # the HTTP statuses the sandboxed predict may fail with
    refusal: tuple[str, ...]  # one of these is in its message
    control_seconds: float = 60.0


EPERM = "Operation not permitted"
DENIED = "Permission denied"
SIGSYS = "SIGSYS"
_ZEROS = "return np.zeros(len(X))"

TECHNIQUES: dict[str, PredictTechnique] = {
    "network": PredictTechnique(
        lambda t: f"import socket\nsocket.create_connection(('127.0.0.1', {t.port}), timeout=5)\n{_ZEROS}",
        lambda t, s: s.connections > 0 and not s.error, (500, 502), (EPERM, SIGSYS),
    ),
    "file-write": PredictTechnique(
        lambda t: f"open({t.canary!r}, 'w').write('pwnd')\n{_ZEROS}",
        lambda t, s: s.canary, (500, 502), (EPERM, DENIED, SIGSYS),
    ),
    "file-read": PredictTechnique(
        lambda t: f"return np.full(len(X), len(open({t.secret!r}).read()))",
        lambda t, s: s.first == 6, (500, 502), (DENIED, EPERM, SIGSYS),
    ),
    "exec": PredictTechnique(
        lambda t: f"import os\nr = os.system('touch {t.canary}')\nassert r == 0, r\n{_ZEROS}",
        lambda t, s: s.canary, (500, 502), ("AssertionError: 32512", EPERM, SIGSYS),
    ),
    "fork": PredictTechnique(
        lambda t: "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nreturn np.full(len(X), pid)",
        lambda t, s: isinstance(s.first, (int, float)) and s.first > 0, (500, 502), (EPERM, SIGSYS, "Resource temporarily unavailable"),
    ),
    "signal-parent": PredictTechnique(
        lambda t: f"import os, signal\nos.kill(os.getppid(), signal.SIGCONT)\n{_ZEROS}",
        lambda t, s: s.shape == [ROWS] and not s.error, (500, 502), (EPERM, SIGSYS),
    ),
    "signal-another-process": PredictTechnique(
        lambda t: f"import os, signal\nos.kill({t.bystander_pid}, signal.SIGKILL)\n{_ZEROS}",
        lambda t, s: s.shape == [ROWS] and not s.error, (500, 502), (EPERM, SIGSYS),
    ),
    "read-process-environ": PredictTechnique(
        lambda t: f"return np.full(len(X), len(open('/proc/{t.bystander_pid}/environ', 'rb').read()))",
        lambda t, s: isinstance(s.first, int) and s.first > 0, (500, 502), (DENIED, EPERM, SIGSYS),
    ),
    "sleep-past-deadline": PredictTechnique(
        lambda t: "import time\ntime.sleep(3600)", lambda t, s: s.timed_out, (504,), ("did not answer within",), control_seconds=5,
    ),
    "allocate-past-limit": PredictTechnique(
        lambda t: f"kept = bytearray(768 << 20)\nkept[::4096] = b'x' * len(kept[::4096])\n{_ZEROS}",
        lambda t, s: s.shape == [ROWS] and not s.error, (502,), ("memory limit",),
    ),
    "sigsegv": PredictTechnique(
        lambda t: "import ctypes\nctypes.string_at(0)", lambda t, s: s.exit_status == 139, (502,), ("killed by SIGSEGV",),
    ),
    "object-array": PredictTechnique(
        lambda t: "return np.array([object()] * len(X), dtype=object)",
        lambda t, s: s.dtype == "|O", (502,), ("object array",),
    ),
    "wrong-row-count": PredictTechnique(
        lambda t: "return np.zeros(len(X) + 1)", lambda t, s: s.shape == [ROWS + 1], (502,), ("rows for a request of",),
    ),
    "huge-output": PredictTechnique(
        lambda t: "return np.ones((len(X), 2_000_000))",
        lambda t, s: s.shape == [ROWS, 2_000_000], (502,), ("over the limit",),
    ),
    # The model owns its worker: it can rewrite the worker's own encoder so that the answer
    # claims one thing and carries another. The server's checks are what stop these.
    "forged-object-dtype": PredictTechnique(
        lambda t: _forging("{'ok': True, 'dtype': '|O', 'shape': [len(X)]}", "b'\\0' * 8 * len(X)"),
        # Refused by the loader on the Predict path, by the runtime on the direct channel.
        lambda t, s: s.dtype == "|O", (502,), ("does not pass on", "which is not accepted"),
    ),
    "forged-short-bytes": PredictTechnique(
        lambda t: _forging("{'ok': True, 'dtype': '<f8', 'shape': [len(X)]}", "b'\\0' * 3"),
        lambda t, s: s.dtype == "<f8" and s.first == "3 bytes", (502,), ("as many bytes as its shape",),
    ),    # A header nested past json's depth: the parser raises RecursionError, not ValueError.
    "forged-nested-header": PredictTechnique(
        lambda t: (
            "import struct, sys\nw = sys.modules.get('loader._internal.worker')\nif w is not None:\n"
            "    w.frame = lambda p: struct.pack('<IQ', 60000, sum(memoryview(b).nbytes for b in p.buffers)) + b'[' * 60000\n"
            f"{_ZEROS}"
        ),
        lambda t, s: s.header == "nested", (502,), ("malformed header",),
    ),
}


def _forging(header: str, data: str) -> str:
    return (
        "import sys\nw = sys.modules.get('loader._internal.worker')\n"
        f"if w is not None:\n    w._plain = lambda result: w.Payload({header}, ({data},))\n{_ZEROS}"
    )


# Runs in the control process: unpickle, predict on ROWS rows, report one JSON line. Where the
# worker's encoder is present (it is importable on the host), the answer goes through it, so a
# payload that rewrites it shows its forged header here.
_CONTROL = r"""
import json, os, resource, sys
limit = int(os.environ.get("CONTROL_ADDRESS_SPACE", 3 << 30))
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import joblib, numpy as np
import loader._internal.worker as worker
report = {"error": ""}
try:
    model = joblib.load(sys.argv[1])
    result = model.predict(np.ones((%d, 3)))
    payload = worker._plain(result)
    framed = worker.frame(payload)
    try:
        json.loads(framed[12 : 12 + int.from_bytes(framed[:4], "little")])
    except RecursionError:
        report["header"] = "nested"
    if payload.header.get("ok"):
        report["dtype"], report["shape"] = payload.header["dtype"], payload.header["shape"]
        size = sum(memoryview(b).nbytes for b in payload.buffers)
        report["first"] = f"{size} bytes" if report["dtype"] == "<f8" and size < 8 * len(report["shape"]) else None
    else:
        report["dtype"] = "|O"
    if report.get("first") is None and getattr(result, "dtype", None) is not None and result.dtype != object and result.size:
        report["first"] = result.flat[0].item()
    if getattr(result, "dtype", None) == object:
        report["dtype"] = "|O"
except BaseException as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"[:500]
sys.stdout.flush()
os.write(1, b"\nCONTROL " + json.dumps(report).encode() + b"\n")
""" % ROWS


def run_control(path: Path, technique: PredictTechnique, target: Target, cwd: Path) -> Seen:
    """Predict with the artefact at `path` in a throwaway host process with no sandbox."""
    argv = ["sh", "-c", 'python -c "$0" "$@"; echo "EXIT $?"', _CONTROL, str(path)]
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '')}", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=technique.control_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        timed_out = True
    seen = seen_in(out, timed_out)
    seen.canary = Path(target.canary).exists()
    return seen


CONTROL = _CONTROL  # the control's Python source: argv[1] is the artefact's path


def seen_in(out: bytes, timed_out: bool) -> Seen:
    """What the control reported in its output (its CONTROL line, then the "EXIT n" its shell printed)."""
    seen = Seen(timed_out=timed_out)
    for line in out.splitlines()[::-1]:
        if line.startswith(b"CONTROL ") and not seen.dtype and not seen.error:
            report = json.loads(line[len(b"CONTROL ") :])
            seen.error, seen.dtype = report["error"], report.get("dtype", "")
            seen.shape, seen.first = report.get("shape", []), report.get("first")
            seen.header = report.get("header", "")
        elif line.startswith(b"EXIT "):
            seen.exit_status = int(line.split()[1])
    return seen
