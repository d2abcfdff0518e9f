"""One background thread per process, for work that should not hold up its caller."""

from __future__ import annotations

import heapq
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable

_background_due: list[tuple[float, int, Callable[[], object]]] = []
_background_order = itertools.count()
_background_cond = threading.Condition()
_background_thread: list[threading.Thread] = []


def run_in_background(call: Callable[[], object], after: float = 0.0) -> None:
    """Run `call` on this process's one background thread, `after` seconds from now and after
    those due before it (starting a thread per call costs milliseconds on a busy interpreter)."""
    with _background_cond:
        heapq.heappush(_background_due, (time.monotonic() + after, next(_background_order), call))
        _background_cond.notify()
        if not _background_thread or not _background_thread[0].is_alive():
            try:
                thread = threading.Thread(target=_run_due, daemon=True, name="background")
                thread.start()
            except RuntimeError:  # interpreter shutdown: run them here, now
                calls = [heapq.heappop(_background_due)[2] for _ in range(len(_background_due))]
                for queued in calls:
                    _call_quietly(queued)
                return
            _background_thread[:] = [thread]


def _run_due() -> None:
    while True:
        with _background_cond:
            while not _background_due or _background_due[0][0] > time.monotonic():
                _background_cond.wait(_background_due[0][0] - time.monotonic() if _background_due else None)
            call = heapq.heappop(_background_due)[2]
        _call_quietly(call)


def _call_quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - one failed call must not end the thread
        print(f"background call failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def close_in_background(fd: int) -> None:
    """Close `fd` in the background: the last close of a large memfd frees its pages, which
    takes tens of milliseconds that should not hold up the caller (an event loop, a load)."""
    run_in_background(lambda: _close_quietly(fd))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # already closed by its owner
