"""Process hardening shared by the loader server and its fork server."""

from __future__ import annotations

import ctypes
import os

_PR_SET_DUMPABLE = 4


def set_non_dumpable() -> None:
    """No core dumps, no ptrace and no /proc/PID/{mem,environ} access for same-uid processes."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def scrub_initial_environment() -> bool:
    """Zero this process's initial environment block, which /proc/PID/environ shows, keeping
    the variables still in os.environ as fresh copies. A non-dumpable process's environ is
    closed to other processes on Linux, but gVisor lets any process of the same user read it:
    a confined child would find the container's environment there. False if the block was not
    found (an empty environment, or one whose strings are no longer in place)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return False
    if not block:
        return True
    libc = ctypes.CDLL(None)
    array = ctypes.c_void_p.in_dll(libc, "environ").value
    if not array:
        return False
    entries = ctypes.cast(array, ctypes.POINTER(ctypes.c_void_p))
    start = None
    i = 0
    # A variable still set points into the block: its offset there gives the block's address.
    while entries[i]:
        entry = ctypes.string_at(entries[i]) + b"\0"
        at = block.find(entry)
        if at >= 0 and (at == 0 or block[at - 1] == 0) and ctypes.string_at(entries[i] - at, len(block)) == block:
            start = entries[i] - at
            break
        i += 1
    if start is None:
        return False
    for name, value in os.environ.items():
        os.putenv(name, value)  # setenv: a copy on the heap, out of the block
    ctypes.memset(start, 0, len(block))
    return True
