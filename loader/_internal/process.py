"""Process hardening shared by the loader server and its fork server."""

from __future__ import annotations

import ctypes

_PR_SET_DUMPABLE = 4


def set_non_dumpable() -> None:
    """No core dumps, no ptrace and no /proc/PID/{mem,environ} access for same-uid processes."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
