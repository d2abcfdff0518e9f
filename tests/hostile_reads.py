"""Hostile artefacts that try to read what the child must not, or to reach odd kernel surface.

Each is a perfectly well-formed estimator (a fitted SVC) carrying one extra attribute,
`stolen_`, computed while it is unpickled: a uint8 array of what the payload managed to read,
or [result, errno] of a raw syscall. Failures are caught inside the payload, so a confined
load still returns a model: the tests check that it carries nothing it should not.
"""

from __future__ import annotations

import builtins
import io
import operator
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.svm import SVC

from tests.hostile import _Reduce


def _computed(code: str) -> _Reduce:
    """Unpickles as the value `code` leaves in `r` (exec into a namespace, then read it back)."""
    namespace: dict = {}
    ran = _Reduce(builtins.exec, code, namespace)
    return _Reduce(operator.itemgetter("r"), _Reduce(operator.itemgetter(1), (ran, namespace)))


def _carrying(code: str) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    model = SVC().fit(x, (x[:, 0] > 0).astype(int))
    model.stolen_ = _computed(code)  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def read_file(path: str) -> bytes:
    """An estimator whose `stolen_` holds the bytes of `path` (or an error message)."""
    return _carrying(
        "import numpy\n"
        "try:\n"
        f"    data = open({path!r}, 'rb').read()\n"
        "except OSError as exc:\n"
        "    data = ('refused: ' + repr(exc)).encode()\n"
        "r = numpy.frombuffer(data, dtype=numpy.uint8).copy()\n"
    )


# Each snippet sets `r` to a syscall's return value; ctypes' errno is read afterwards.
_CALLS = {
    # openat2(AT_FDCWD, "/etc/passwd", &{flags=O_RDONLY}, sizeof)
    "openat2": "how = (ctypes.c_uint64 * 3)(0, 0, 0)\nr = libc.syscall(437, -100, b'/etc/passwd', ctypes.byref(how), 24)",
    # name_to_handle_at(AT_FDCWD, "/etc/passwd", handle{handle_bytes=128}, &mount_id, 0)
    "name_to_handle_at": (
        "handle = (ctypes.c_uint32 * 34)(128)\nmount = ctypes.c_int()\n"
        "r = libc.syscall(303, -100, b'/etc/passwd', handle, ctypes.byref(mount), 0)"
    ),
    # open_by_handle_at(AT_FDCWD, the handle of "/etc/passwd", O_RDONLY)
    "open_by_handle_at": (
        "handle = (ctypes.c_uint32 * 34)(128)\nmount = ctypes.c_int()\n"
        "libc.syscall(303, -100, b'/etc/passwd', handle, ctypes.byref(mount), 0)\n"
        "r = libc.syscall(304, -100, handle, 0)"
    ),
    # msgget(IPC_PRIVATE, IPC_CREAT | 0600), removed again if it worked
    "sysv-msgget": "r = libc.syscall(68, 0, 0o1000 | 0o600)\nif r >= 0: libc.syscall(71, r, 0, 0)",
    # mq_open("/hostile-mq", O_CREAT | O_RDWR, 0600, NULL), unlinked again if it worked
    "posix-mq_open": "r = libc.syscall(240, b'hostile-mq', 0o100 | 0o2, 0o600, None)\nif r >= 0: libc.syscall(241, b'hostile-mq')",
    # process_madvise(pidfd of itself, no iovec, 0, MADV_COLD, 0)
    "process_madvise": "pidfd = libc.syscall(434, os.getpid(), 0)\nr = libc.syscall(440, pidfd, None, 0, 20, 0)",
    # a syscall number no kernel has
    "syscall-999": "r = libc.syscall(999, 0, 0, 0, 0, 0, 0)",
}
SYSCALLS = sorted(_CALLS)


def call_syscall(name: str) -> bytes:
    """An estimator whose `stolen_` is [return value, errno] of the syscall `name` tried."""
    return _carrying(
        "import ctypes, os, numpy\n"
        "libc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
        f"{_CALLS[name]}\n"
        "r = numpy.array([r, ctypes.get_errno()], dtype=numpy.int64)\n"
    )


def unconfined(artefact: bytes, directory: Path) -> np.ndarray:
    """`stolen_` of the artefact unpickled in a plain throwaway interpreter: the positive control."""
    path = directory / "unconfined.joblib"
    path.write_bytes(artefact)
    script = "import joblib, sys; sys.stdout.buffer.write(joblib.load(sys.argv[1]).stolen_.tobytes())"
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=120, check=True)
    return np.frombuffer(out.stdout, dtype=np.uint8)


def as_syscall_result(stolen: np.ndarray) -> tuple[int, int]:
    """[return value, errno] from a `stolen_` array of a call_syscall artefact."""
    values = np.frombuffer(stolen.tobytes(), dtype=np.int64)
    return int(values[0]), int(values[1])

