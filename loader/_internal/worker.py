"""The sandboxed worker's own code: it runs in the confined process that serves one model.

Kept free of gRPC and of the loader's server code: the fork server's child imports only this
(and what the model needs) before it is confined. See `loader/_internal/inference.py` for the
loader's side and the wire format.
"""

from __future__ import annotations

import json
import math
import os
import select
import socket
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from loader._internal.child import PassedFd
from loader._internal.confine import ChildLimits
from loader.contract import FRAME, frame_head

METHODS = ("predict", "predict_proba", "transform")


@dataclass(frozen=True)
class Payload:
    """One message: a JSON-able header and raw buffers (the arrays' bytes)."""

    header: dict[str, Any]
    buffers: tuple[bytes | memoryview, ...] = ()


# --- framing (both sides) ------------------------------------------------------------------------


def frame(payload: Payload) -> bytes:
    return frame_head(payload.header, sum(memoryview(b).nbytes for b in payload.buffers))


# Answers up to this size go in one write: the reader then wakes once per answer, not twice.
_JOIN_BYTES = 64 << 10


def _send(fd: int, payload: Payload) -> None:
    head = frame(payload)
    if sum(memoryview(b).nbytes for b in payload.buffers) <= _JOIN_BYTES:
        _write_all(fd, b"".join([head, *payload.buffers]))
        return
    _write_all(fd, head)
    for buffer in payload.buffers:
        _write_all(fd, buffer)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytearray | None:
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return data


# --- the worker (runs in the confined process) ---------------------------------------------------


def run_worker(control: PassedFd, output: Connection, limits: ChildLimits, user_code: str) -> None:
    """Worker entry point: confine, report ready, take the artefact, unpickle it once, serve."""
    from loader._internal.confine import (
        apply_limits,
        install_syscall_filter,
        isolate,
        readable_paths,
        restrict_filesystem,
    )

    try:
        channel = socket.socket(fileno=control.fd)  # probes the socket now, before the filter
        fd = channel.fileno()
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
        # Exactly: /dev/null as stdin, the output pipe as stdout and stderr, the control socket.
        isolate((0, 1, 2, fd))
        os.chdir("/")
        sys.path[:] = [entry for entry in sys.path if os.path.isabs(entry)]
        if user_code:
            sys.path.append(user_code)
        os.environ.clear()
        _one_core()
        apply_limits(limits)
        extra = (user_code,) if user_code else ()
        restrict_filesystem([*readable_paths(), *extra] if extra else None, needed=extra)
        install_syscall_filter()
    except Exception as exc:  # noqa: BLE001 - never run unconfined
        _send(control.fd, Payload({"ok": False, "error": f"could not confine the worker: {exc}"}))
        os._exit(3)
    _send(fd, Payload({"ok": True, "ready": True}))
    # The artefact, and the worker's end of a caller's direct channel if the caller asked for one.
    _, fds, _, _ = socket.recv_fds(channel, 1, 2)
    if not fds:
        os._exit(0)
    try:
        model = _unpickle(fds[0])
    except MemoryError:
        _send(fd, Payload({"ok": False, "limit": "memory"}))
        os._exit(4)
    except BaseException as exc:  # noqa: BLE001 - hostile payloads raise anything
        _send(fd, Payload({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}))
        os._exit(5)
    if hasattr(model, "feature_names_in_"):
        try:
            import pandas  # noqa: F401 - fitted on a DataFrame: imported now, not on the first request
        except ImportError:
            pass  # a DataFrame request then fails naming the missing module
    kind = f"{type(model).__module__}.{type(model).__qualname__}"[:200]
    _send(fd, Payload({"ok": True, "methods": [m for m in METHODS if _has(model, m)], "type": kind}))
    _serve(model, [fd, *fds[1:2]])


def _serve(model: Any, fds: list[int]) -> None:
    """Answer requests on the loader's socket and the direct channel, one at a time, until either
    is closed: a closed direct channel means the process that held it (MLServer) has gone or
    dropped the model, and the worker must not outlive it."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            request = _receive(fd)
            if request is None:
                os._exit(0)
            _send(fd, _answer(model, *request))


def _one_core() -> None:
    """A worker computes on one core: the threads a parallel predict would start are refused
    (RLIMIT_NPROC), and the cgroup files joblib reads to count CPUs are outside its Landlock view
    (k-NN's predict failed on them with PermissionError). So every count it asks says one."""
    from joblib.externals.loky.backend import context

    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", LOKY_MAX_CPU_COUNT="1")
    context._cpu_count_user = lambda os_cpu_count: 1
    context.physical_cores_cache = 1


def _unpickle(fd: int) -> Any:
    from loader._internal import unpickle

    return unpickle.load_artefact(fd)


def _has(model: Any, method: str) -> bool:
    try:
        return callable(getattr(model, method, None))
    except Exception:  # noqa: BLE001 - a property may raise (scikit-learn's available_if)
        return False


def _receive(fd: int) -> tuple[dict[str, Any], bytearray] | None:
    head = _read_exact(fd, FRAME.size)
    if head is None:
        return None
    header_len, body_len = FRAME.unpack(head)
    header = _read_exact(fd, header_len)
    body = _read_exact(fd, body_len)
    if header is None or body is None:
        return None
    return json.loads(header), body


def _answer(model: Any, header: dict[str, Any], body: bytearray) -> Payload:
    try:
        method = header["method"]
        if method not in METHODS or not _has(model, method):
            return Payload({"ok": False, "error": f"the model has no method {method!r}"})
        result = getattr(model, method)(_decode(header, body))
        return _plain(result)
    except MemoryError:
        return Payload({"ok": False, "limit": "memory"})
    except BaseException as exc:  # noqa: BLE001 - the model's code raises anything
        return Payload({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})


def _decode(header: dict[str, Any], body: bytearray) -> Any:
    """The request's arrays (views of `body`) as the model gets them: an ndarray or a DataFrame."""
    import numpy as np

    arrays = []
    offset = 0
    for spec in header["inputs"]:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        count = math.prod(shape)
        array = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
        if spec.get("object"):
            array = array.astype(object)  # Python str/bytes, as the caller's codec decoded them
        arrays.append((spec.get("name", ""), array))
    if not header.get("frame"):
        return arrays[0][1]
    import pandas as pd

    return pd.DataFrame({name: array for name, array in arrays})


def _plain(result: Any) -> Payload:
    """The model's answer as one plain array (strings as fixed-width), or a refusal."""
    import numpy as np

    if hasattr(result, "to_numpy"):  # a DataFrame or Series (set_output(transform="pandas"))
        result = result.to_numpy()
    if hasattr(result, "toarray"):  # a SciPy sparse matrix
        result = result.toarray()
    array = np.asarray(result)
    was_object = array.dtype == object
    if was_object:
        if all(isinstance(v, str) for v in array.flat):
            array = array.astype(str)
        elif all(isinstance(v, bytes) for v in array.flat):
            array = array.astype(bytes)
        else:
            return Payload({"ok": False, "refused": "the model answered with an object array that is not all strings"})
    array = np.ascontiguousarray(array)
    if not array.dtype.isnative and array.dtype.byteorder != "|":
        array = array.astype(array.dtype.newbyteorder("="))
    header = {"ok": True, "dtype": array.dtype.str, "shape": list(array.shape), "object": was_object}
    return Payload(header, (array.data.cast("B"),))
