"""The confined child: the only code that ever unpickles an artefact.

It runs in a process forked from the fork server, which has imported `preload` (scikit-learn,
skops, ...) already; this module itself stays light so that the gRPC server can reference
`run` without importing any of that.
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

from loader._internal.confine import ChildLimits, confine


class PassedFd:
    """A file descriptor handed to a fork-server child (duplicated over the server's socket)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return PassedFd._rebuild, (reduction.DupFd(self.fd),)

    @staticmethod
    def _rebuild(dup: Any) -> PassedFd:  # a multiprocessing DupFd, rebuilt in the child
        return PassedFd(dup.detach())


def _convert(artefact: PassedFd, result: PassedFd) -> tuple[int, list[str], dict[str, float]]:
    # Already imported by the fork server (preload), so these cost nothing here.
    import joblib
    import sklearn.base
    import skops.io

    started = time.perf_counter()
    with os.fdopen(artefact.fd, "rb") as source:
        source.seek(0)  # the parent's writes left the shared offset at the end
        model = joblib.load(source)
    unpickled = time.perf_counter()
    if not isinstance(model, sklearn.base.BaseEstimator):
        raise TypeError(
            f"the artefact holds a {type(model).__module__}.{type(model).__qualname__}, "
            "not a scikit-learn estimator"
        )
    sink = os.fdopen(result.fd, "w+b")
    skops.io.dump(model, sink)
    sink.flush()
    size = sink.tell()
    sink.seek(0)
    untrusted = skops.io.get_untrusted_types(data=sink.read())
    done = time.perf_counter()
    return size, untrusted, {"unpickle": unpickled - started, "convert": done - unpickled}


def run(artefact: PassedFd, result: PassedFd, status: Connection, output: Connection, limits: ChildLimits) -> None:
    """Child entry point: confine, unpickle the sealed artefact, write skops to `result`, exit."""
    try:
        # Whatever the payload prints goes to a pipe the parent reads with a cap.
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        os.chdir("/")
        # Relative sys.path entries ('' is the working directory) would resolve against "/".
        sys.path[:] = [entry for entry in sys.path if os.path.isabs(entry)]
        os.environ.clear()
        confine(limits)
    except Exception as exc:  # noqa: BLE001 - report any confinement failure, never run unconfined
        status.send_bytes(json.dumps({"ok": False, "error": f"could not confine the child: {exc}"}).encode())
        os._exit(3)
    try:
        size, untrusted, timings = _convert(artefact, result)
    except MemoryError:
        status.send_bytes(json.dumps({"ok": False, "limit": "memory"}).encode())
        os._exit(4)
    except BaseException as exc:  # noqa: BLE001 - hostile payloads raise anything
        message = f"{type(exc).__name__}: {exc}"[:2000]
        status.send_bytes(json.dumps({"ok": False, "error": message}).encode())
        os._exit(5)
    status.send_bytes(json.dumps({"ok": True, "untrusted_types": untrusted, "size": size, "timings": timings}).encode())
    sys.stdout.flush()
    os._exit(0)
