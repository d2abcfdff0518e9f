"""Hostile pickles for the adversarial tests: each runs code the moment it is unpickled."""

from __future__ import annotations

import builtins
import pickle


class _Reduce:
    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


def run_python(code: str) -> bytes:
    """A pickle whose unpickling executes `code` with builtins.exec."""
    return pickle.dumps(_Reduce(builtins.exec, code), protocol=4)


def os_system(command: str) -> bytes:
    import os

    return pickle.dumps(_Reduce(os.system, command), protocol=4)


TRACE_MESSAGE = "TRACE: this artefact was unpickled"
# Unpickling raises an error carrying TRACE_MESSAGE, which the loader reports: the one trace
# of unpickling that survives the sandbox (which blocks file writes and sockets).
TRACE = run_python(f"raise RuntimeError({TRACE_MESSAGE!r})")
