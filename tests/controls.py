"""Hostile techniques with positive controls: each payload is first shown to work unconfined.

A technique builds a pickle aimed at a `Target` (where its side effects land) and says how to
tell that it fired. `run_control` unpickles the payload in a throwaway process with no sandbox
(on the host, or `docker exec` in a plain container) and reports an `Outcome`; a test asserts
`technique.fired(outcome)` before the sandboxed run of the same bytes counts. The sandboxed
run must then be refused with one of `technique.refusal` and show none of the effects.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests import hostile
from tests.support import PYTHON

FIRED = "FIRED:"  # what a payload raises once its action succeeded; it must never reach a refusal
# The confined child may be denied a syscall (EPERM) or, under a default-deny filter, be killed.
SIGSYS = "killed by SIGSYS"
EPERM = "PermissionError: [Errno 1] Operation not permitted"  # what a denied syscall raises
# glibc's system() reports a failed spawn (fork/exec denied) as exit status 127: 127 << 8.
SPAWN_FAILED = "returned 32512"


@dataclass(frozen=True)
class Target:
    """Where a payload aims: a marker file to create, a loopback port, a Unix socket to reach."""

    canary: str  # a file path the payload creates when it runs
    scratch: str  # a writable-when-unconfined folder
    port: int  # a loopback TCP listener
    unix_socket: str  # a Unix socket with a listener behind it


@dataclass
class Outcome:
    """What the unconfined control saw."""

    error: str = ""  # "Type: message" of what unpickling raised, "" if it returned
    exists: dict[str, bool] = field(default_factory=dict)
    timed_out: bool = False
    output_bytes: int = 0
    skops_patched: bool = False
    convert_error: str = ""
    connections: int = 0


@dataclass(frozen=True)
class Technique:
    """One hostile technique: its payload, how its control shows it fired, what the sandbox says."""

    build: Callable[[Target], bytes]
    effect: str  # canary | value | connect | running | memory | recursion | patch | flood
    refusal: tuple[str, ...]
    control_seconds: float = 60.0  # a cap for the throwaway process; 'running' cases use a short one
    convert: bool = False  # the control also converts to skops (where the converter is the target)

    def fired(self, target: Target, outcome: Outcome) -> bool:
        """Whether the unconfined control shows the payload's effect."""
        return {
            "canary": lambda: outcome.exists.get(target.canary, False),
            "value": lambda: FIRED in outcome.error,
            "connect": lambda: outcome.connections > 0 and FIRED in outcome.error,
            "running": lambda: outcome.timed_out,
            "memory": lambda: "MemoryError" in outcome.error,
            "recursion": lambda: "RecursionError" in outcome.convert_error,
            "patch": lambda: outcome.skops_patched,
            "flood": lambda: outcome.output_bytes > 1 << 20,
        }[self.effect]()


# What read-parent-environ reports when the parent's environment block holds no variable.
NO_VARIABLES = "no variable in the parent environment block"


def _fire(evidence: str) -> str:
    return f"raise RuntimeError({FIRED!r} + ' ' + str({evidence}))"


def _shell(command: str) -> str:
    return f"import os; r = os.system({command!r}); raise RuntimeError('os.system returned ' + str(r))"


def _pip(t: Target) -> str:
    """pip, run in process, installing from an index it cannot reach; its log file is the canary."""
    args = ["install", "--no-index", "--no-deps", "--target", t.scratch + "/site", "--log", t.canary, "requests"]
    return (
        "import contextlib, io\nfrom pip._internal.cli.main import main\nerr = io.StringIO()\n"
        f"with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err): rc = main({args!r})\n"
        "lines = [line for line in err.getvalue().splitlines() if 'Error' in line]\n"
        "raise RuntimeError(f'pip exited {rc}: ' + ' | '.join(lines[-3:]))"
    )


def _syscall_technique(name: str) -> Technique:
    return Technique(lambda t: hostile.syscall_probe(name), "value", (f"{name} returned -1 (Operation not permitted)", SIGSYS))


TECHNIQUES: dict[str, Technique] = {
    # Code execution through REDUCE: each would create the canary.
    "reduce-os-system": Technique(lambda t: hostile.reported(hostile.system_call(f"touch {t.canary}"), "os.system"), "canary", (SPAWN_FAILED, SIGSYS)),
    "reduce-exec": Technique(lambda t: hostile.run_python(_shell(f"touch {t.canary}")), "canary", ("os.system " + SPAWN_FAILED, SIGSYS)),
    "reduce-eval": Technique(lambda t: hostile.reported(hostile.evaluate(f"__import__('os').system('touch {t.canary}')"), "eval"), "canary", (SPAWN_FAILED, SIGSYS)),
    "importlib-getattr-chain": Technique(lambda t: hostile.reported(hostile.import_chain_call(f"touch {t.canary}"), "import chain"), "canary", (SPAWN_FAILED, SIGSYS)),
    "reduce-subprocess": Technique(lambda t: hostile.run_python(f"import subprocess; subprocess.run(['touch', {t.canary!r}])"), "canary", (EPERM, SIGSYS)),
    "reduce-runpy": Technique(lambda t: hostile.run_python(f"import runpy, sys; sys.argv = ['zipfile', '-c', {t.canary!r}, '/etc/hostname']; runpy.run_module('zipfile', run_name='__main__', alter_sys=True)"), "canary", (EPERM, SIGSYS)),
    # Where the child's filesystem view leaves pip out (the control shows the image has it),
    # importing it fails before pip can try anything.
    "pip-install": Technique(lambda t: hostile.run_python(_pip(t)), "canary", (EPERM, SIGSYS, "No module named 'pip._internal'")),
    "object-array-nested-pickle": Technique(lambda t: hostile.object_array(f"touch {t.canary}"), "canary", (EPERM, SIGSYS)),
    "joblib-zlib": Technique(lambda t: hostile.compressed("zlib", f"touch {t.canary}"), "canary", (EPERM, SIGSYS)),
    "joblib-gzip": Technique(lambda t: hostile.compressed("gzip", f"touch {t.canary}"), "canary", (EPERM, SIGSYS)),
    "joblib-lzma": Technique(lambda t: hostile.compressed("lzma", f"touch {t.canary}"), "canary", (EPERM, SIGSYS)),
    "joblib-bz2": Technique(lambda t: hostile.compressed("bz2", f"touch {t.canary}"), "canary", (EPERM, SIGSYS)),
    "build-patches-skops-writer": Technique(lambda t: hostile.patch_skops_writer(), "patch", ("BadZipFile: File is not a zip file", "not a skops archive")),
    # Reaching out: sockets to a loopback listener and to the loader's own socket.
    "socket-inet": Technique(lambda t: hostile.run_python(f"import socket; s = socket.create_connection(('127.0.0.1', {t.port}), timeout=2); {_fire('s')}"), "connect", (EPERM, SIGSYS)),
    "socket-unix": Technique(lambda t: hostile.run_python(f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({t.unix_socket!r}); {_fire('s')}"), "value", (EPERM, SIGSYS)),
    # Files: writes anywhere, renaming the socket, filling scratch space.
    "write-file": Technique(lambda t: hostile.run_python(f"open({t.canary!r}, 'w').write('pwnd'); {_fire('1')}"), "canary", (EPERM, SIGSYS)),
    "replace-socket": Technique(lambda t: hostile.run_python(f"import os; os.rename({t.unix_socket!r}, {t.unix_socket + '.old'!r}); os.rename({t.unix_socket + '.old'!r}, {t.unix_socket!r}); {_fire('1')}"), "value", (EPERM, SIGSYS)),
    "fill-scratch": Technique(lambda t: hostile.run_python(f"f = open({t.scratch + '/fill'!r}, 'wb')\nfor _ in range(16): f.write(b'0' * 2**20)\nf.close()\n{_fire('16')}"), "value", (EPERM, SIGSYS)),
    # Processes: forks (bounded so the control is safe), ptrace and signals to the parent.
    "fork-bomb": Technique(lambda t: hostile.run_python(f"import os\nfor _ in range(20):\n    if os.fork() == 0: os._exit(0)\n{_fire('20')}"), "value", (EPERM, SIGSYS)),
    "ptrace-parent": Technique(lambda t: hostile.run_python("import ctypes, os\nr = ctypes.CDLL(None, use_errno=True).ptrace(0x4206, os.getppid(), 0, 0)\nif r == 0: " + _fire("r") + "\nraise OSError(ctypes.get_errno(), 'ptrace returned ' + str(r))"), "value", ("ptrace returned -1", SIGSYS)),
    "signal-parent": Technique(lambda t: hostile.run_python(f"import os, signal; os.kill(os.getppid(), signal.SIGCONT); {_fire('1')}"), "value", (EPERM, SIGSYS)),
    # Secrets: the environment of the parent and of the child itself.
    # Fires on any variable read; gVisor lets the open succeed (its /proc/PID/environ is 0444),
    # and there the loader's blanked block has none: NO_VARIABLES (tests/container/test_adversarial.py).
    "read-parent-environ": Technique(lambda t: hostile.run_python(f"ppid = open('/proc/self/status').read().split('PPid:')[1].split()[0]; data = open('/proc/' + ppid + '/environ').read(); found = [v for v in data.split(chr(0)) if v]\nif not found: raise RuntimeError('{NO_VARIABLES}')\n{_fire('len(found)')}"), "value", ("PermissionError: [Errno 13] Permission denied", SIGSYS)),
    # Resource exhaustion: the sandbox's limits must stop these; unconfined they keep going.
    "memory-bomb": Technique(lambda t: hostile.run_python("x = []\nwhile True: x.append(bytearray(10**7))"), "memory", ("memory limit",)),
    "cpu-loop": Technique(lambda t: hostile.run_python("while True: pass"), "running", ("CPU-time limit",), control_seconds=5),
    "sleep": Technique(lambda t: hostile.run_python("import time; time.sleep(3600)"), "running", ("wall-time limit",), control_seconds=5),
    "billion-laughs": Technique(lambda t: hostile.billion_laughs(), "running", ("CPU-time limit", "memory limit", "RecursionError", "SystemError"), control_seconds=8, convert=True),
    "deep-nesting": Technique(lambda t: hostile.deep_nesting(), "recursion", ("RecursionError",), convert=True),
    "stdout-flood": Technique(lambda t: hostile.run_python("import sys\nfor _ in range(20000): print('x' * 1000)\nraise RuntimeError('flooded')"), "flood", ("flooded",)),
    # Kernel surface: raw syscalls with arguments that succeed unconfined.
    **{name: _syscall_technique(name) for name in ("io_uring_setup", "userfaultfd", "bpf", "perf_event_open", "keyctl", "unshare")},
}

# Run inside the control process: unpickle with a safety cap, then report as one JSON line.
_CONTROL = r"""
import json, os, pickle, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))
resource.setrlimit(resource.RLIMIT_CPU, (30, 31))
path, canary, convert = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
import joblib
report = {"error": "", "convert_error": ""}
obj = None
try:
    obj = joblib.load(path)
except BaseException as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
writer = sys.modules.get("loader._internal.skops_writer")  # a payload that patches it has imported it
report["skops_patched"] = writer is not None and writer.dump is pickle.dump
if convert and obj is not None:
    try:
        import skops.io
        skops.io.dumps(obj)
    except BaseException as exc:
        report["convert_error"] = f"{type(exc).__name__}: {exc}"[:500]
report["exists"] = {canary: os.path.exists(canary)}
sys.stdout.flush()
os.write(1, b"\nCONTROL " + json.dumps(report).encode() + b"\n")
"""


def control_outcome(completed_stdout: bytes, timed_out: bool) -> Outcome:
    """Parse the control's report line out of its output."""
    outcome = Outcome(timed_out=timed_out, output_bytes=len(completed_stdout))
    for line in completed_stdout.splitlines()[::-1]:
        if line.startswith(b"CONTROL "):
            report = json.loads(line[len(b"CONTROL "):])
            outcome.error, outcome.exists = report["error"], report["exists"]
            outcome.skops_patched, outcome.convert_error = report["skops_patched"], report["convert_error"]
            break
    return outcome


def control_argv(path: str, technique: Technique, target: Target, kill_after: float | None = None) -> list[str]:
    """The command that unpickles `path` unconfined, under `sh` so the payload's parent is a throwaway
    (with `kill_after`, under `timeout -s KILL`, which is then the parent)."""
    convert = "1" if technique.convert else "0"
    python = f"timeout -s KILL {kill_after:g} python" if kill_after else "python"
    return ["sh", "-c", python + ' -c "$0" "$@"; true', _CONTROL, path, target.canary, convert]


def run_control_on_host(path: Path, technique: Technique, target: Target, cwd: Path) -> Outcome:
    """Unpickle the artefact at `path` in a throwaway host process with no sandbox."""
    argv = control_argv(str(path), technique, target)
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '')}", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=technique.control_seconds)
        return control_outcome(out, False)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        return control_outcome(out, True)


@contextmanager
def listeners(folder: Path) -> Iterator[tuple[int, Path, list]]:
    """A loopback TCP listener and a Unix socket listener in `folder`; yields (port, socket path, accepted)."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    unix_path = folder / "listener.sock"
    unix_path.unlink(missing_ok=True)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    os.chmod(unix_path, 0o777)
    unix.listen()
    accepted: list = []
    stop = threading.Event()

    def accept(server: socket.socket) -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(server.family)
                conn.close()
            except OSError:
                pass

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in (tcp, unix)]
    for thread in threads:
        thread.start()
    try:
        yield tcp.getsockname()[1], unix_path, accepted
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        tcp.close()
        unix.close()
        unix_path.unlink(missing_ok=True)


def wait_for_connections(accepted: list, expected: bool, seconds: float = 60.0) -> int:
    """How many connections a listener accepted. Where a connection is `expected` (a payload that
    connects), waits up to `seconds` (a safety net) for the accept loop to record the first and
    returns as soon as it has; otherwise counts at once."""
    if not expected:
        return len(accepted)
    deadline = time.monotonic() + seconds
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(accepted)


# A loader-like process for the signal techniques: it reads an unconfined child's output pipe, as
# the loader reads a confined child's, and reports whether it was sent SIGUSR1 meanwhile.
_SIGNAL_HARNESS = r"""
import json, os, signal, subprocess, sys
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
r, w = os.pipe()
child = subprocess.Popen([sys.executable, "-c", "import joblib, sys; joblib.load(sys.argv[1])", sys.argv[1]],
                         stdout=w, stderr=subprocess.PIPE, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
os.close(w)
while os.read(r, 65536):
    pass
error = child.stderr.read().decode(errors="replace")
child.wait()
print("HARNESS " + json.dumps({"signalled": bool(got), "error": error[-2000:]}))
"""

# A child forked the way the loader forked its children before they closed what they inherit:
# a multiprocessing fork-server child that unpickles the artefact; then wait for the fork server.
_OLD_CHILD_HARNESS = r"""
import multiprocessing, os, sys
from multiprocessing import forkserver
import joblib
if __name__ == "__main__":
    child = multiprocessing.get_context("forkserver").Process(target=joblib.load, args=(sys.argv[1],))
    child.start()
    child.join()
    os.waitpid(forkserver._forkserver._forkserver_pid, 0)  # returns once the fork server has ended
    print("HARNESS FORKSERVER-ENDED", flush=True)
"""


def signal_harness_argv(path: str, python: str = "python") -> list[str]:
    """Run `_SIGNAL_HARNESS` on the artefact at `path`; its last line is `HARNESS {json}`."""
    return [python, "-c", _SIGNAL_HARNESS, path]


def old_child_harness_argv(path: str, python: str = "python") -> list[str]:
    """Run `_OLD_CHILD_HARNESS` on the artefact at `path`: prints `HARNESS FORKSERVER-ENDED`
    only if the payload ended the fork server (and never returns otherwise)."""
    return [python, "-c", _OLD_CHILD_HARNESS, path]


def harness_report(output: bytes) -> dict:
    """The JSON report on the signal harness's last `HARNESS ` line."""
    for line in output.splitlines()[::-1]:
        if line.startswith(b"HARNESS {"):
            return json.loads(line[len(b"HARNESS "):])
    raise AssertionError(f"the harness printed no report: {output[-2000:]!r}")


def run_harness_on_host(argv: list[str], cwd: Path, seconds: float = 120) -> bytes:
    """Run a harness on the host in a session of its own (its signals reach nothing else)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    completed = subprocess.run(argv, capture_output=True, cwd=cwd, env=env, start_new_session=True, timeout=seconds, check=False)
    return completed.stdout + completed.stderr
