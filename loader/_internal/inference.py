"""Serving a verified model inside the sandbox: one confined, long-lived worker per served model.

A worker is forked from the same fork server as the unpickling children and confined the same
way (rlimits, Landlock read-only, the default-deny seccomp filter of `confine.py`) before it is
given anything. It then receives the verified artefact's sealed memfd, unpickles it once and
answers predict requests over its socket until the loader ends it. Only plain arrays cross:
the loader sends the request's arrays as raw buffers described by a JSON header, and relays the
worker's answer (a JSON header and one raw buffer, size-capped here) to the caller, which parses
it as untrusted data. Nothing the worker sends is unpickled by anyone.

Wire format on the worker's socket, both ways: 4-byte little-endian header length, 8-byte
little-endian body length, the JSON header, the body (buffers one after another).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc

from loader._internal.child import PassedFd
from loader._internal.confine import ChildLimits, unpickling_error
from loader._internal.worker import METHODS, Payload, frame, run_worker
from loader.background import run_in_background
from loader.contract import FRAME, MAX_FRAME_HEADER, array_itemsize, array_shape, load_header, reported_text
from loader.errors import BadRequest, LimitExceeded, LoaderError, NotFound, UnpicklingFailed

_TAIL_BYTES = 4096  # what is kept of a worker's own output, for error messages
_START_SECONDS = 60.0
_UNPICKLE_SECONDS = 120.0
_REFILL_AFTER_SECONDS = 0.1


class WorkerFailed(LoaderError):
    """The worker crashed, hit a limit or sent something malformed; the request fails."""

    code = grpc.StatusCode.INTERNAL


class PredictDeadline(LoaderError):
    """A request ran past its deadline; the worker was ended."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelRaised(LoaderError):
    """The model's own code raised on this input (the worker keeps serving)."""

    code = grpc.StatusCode.UNKNOWN


@dataclass(frozen=True)
class WorkerLimits(ChildLimits):
    """A served model's limits: the child's rlimits (its address space is the model's memory
    limit), plus a deadline per request and a cap on each answer, enforced by the loader."""

    deadline_seconds: float = 30.0
    max_input_bytes: int = 64 << 20
    max_output_bytes: int = 64 << 20
    max_workers: int = 64


def predict_request(
    method: str, arrays: list[tuple[str, str, tuple[int, ...], bytes, bool]], frame: bool
) -> tuple[dict[str, Any], list[bytes]]:
    """The worker's request for `method` on `arrays` (name, dtype, shape, data, object); raises
    BadRequest naming what is malformed."""
    if method not in METHODS:
        raise BadRequest(f"method {method!r}: expected one of {list(METHODS)}")
    if not arrays or (not frame and len(arrays) != 1):
        raise BadRequest("send one array, or the columns of a DataFrame with `frame`")
    inputs = []
    for name, dtype, shape, data, is_object in arrays:
        size, checked = array_itemsize(dtype), array_shape(list(shape))
        if size is None or checked is None:
            raise BadRequest(f"input {name!r}: dtype {dtype!r} or shape {list(shape)} is not accepted")
        count = 1
        for n in checked:
            count *= n
        if count * size != len(data):
            raise BadRequest(f"input {name!r}: {len(data)} bytes do not hold a {dtype} array of shape {list(shape)}")
        inputs.append({"name": name, "dtype": dtype, "shape": list(checked), "object": bool(is_object)})
    return {"method": method, "frame": frame, "inputs": inputs}, [data for *_, data, _ in arrays]


def answer_array(answer: dict[str, Any]) -> tuple[str, list[int], bool]:
    """The dtype and shape the worker says its answer has, if they are well formed (the caller
    checks them against the bytes and the request again: this only refuses garbage early)."""
    dtype, shape = answer.get("dtype"), array_shape(answer.get("shape"))
    if not isinstance(dtype, str) or array_itemsize(dtype) is None or shape is None:
        raise WorkerFailed(f"the model answered with an array the loader does not pass on ({str(dtype)[:40]})")
    return dtype, list(shape), answer.get("object") is True


# --- the loader's side ---------------------------------------------------------------------------


class _Tail:
    """Drains a worker's stdout/stderr on a thread, keeping only the last few KiB."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._kept = b""
        self.on_exit: Callable[[], None] | None = None  # called once the worker has exited
        self._thread = threading.Thread(target=self._drain, daemon=True, name="worker-output")
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._conn.fileno(), 65536)
            except OSError:
                return
            if not chunk:
                break
            self._kept = (self._kept + chunk)[-_TAIL_BYTES:]
        # The worker held the pipe's only write end: it has exited (or is exiting).
        if self.on_exit is not None:
            self.on_exit()

    def text(self) -> str:
        self._join(0.2)
        return self._kept.decode(errors="replace")

    def close(self) -> None:
        self._join(1)
        self._conn.close()

    def _join(self, seconds: float) -> None:
        if threading.current_thread() is not self._thread:  # on_exit runs on this thread
            self._thread.join(seconds)


@dataclass(frozen=True)
class Served:
    """A model served by a worker: its handle and what it can do."""

    handle: str
    methods: tuple[str, ...]
    limits: WorkerLimits
    timings: dict[str, float]
    # The caller's end of a direct channel to the worker, to be passed on (or closed).
    channel: socket.socket | None = None


class _Worker:
    """One confined worker process and the socket to it; one request at a time."""

    def __init__(self, proc: Any, sock: socket.socket, tail: _Tail, name: str) -> None:
        self.proc = proc
        self.sock = sock
        self.tail = tail
        self.name = name
        self.lock = threading.Lock()
        # Asking a forkserver child for its status is not thread-safe (two readers of its
        # sentinel: one gets the status, the other EOF, read as 255); the reaper asks too.
        self._status_lock = threading.Lock()
        self.ended = ""  # why it ended, once it has

    def alive(self) -> bool:
        with self._status_lock:
            return self.proc.is_alive()

    def wait(self, seconds: float) -> int | None:
        """The exit code once it has exited (within `seconds`), else None."""
        with self._status_lock:
            self.proc.join(seconds)
            return self.proc.exitcode

    def end(self, why: str) -> None:
        if not self.ended:
            self.ended = why
        if self.alive():
            self.proc.kill()
        self.wait(5)
        self.sock.close()
        self.tail.close()

    def cause(self) -> str:
        """Why the process ended, from its exit status and what it printed last."""
        code = self.wait(5)
        tail = self.tail.text()[-500:]
        detail = f"; it printed: {tail!r}" if tail else ""
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            what = {"SIGXCPU": "the CPU-time limit", "SIGSYS": "a forbidden system call"}.get(sig)
            return f"was killed by {sig}" + (f" ({what})" if what else "") + detail
        return f"exited ({code})" + detail


class Workers:
    """The loader's served models: start a worker on verified bytes, predict, end it."""

    def __init__(self, limits: WorkerLimits | None = None, user_code: str = "") -> None:
        self.limits = limits or WorkerLimits()
        self.user_code = user_code
        self._child_limits = ChildLimits(
            memory_bytes=self.limits.memory_bytes,
            cpu_seconds=self.limits.cpu_seconds,
            max_open_files=self.limits.max_open_files,
            max_result_bytes=self.limits.max_result_bytes,
        )
        self._ctx = multiprocessing.get_context("forkserver")
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        # One worker forked and confined ahead of time (it has not seen any artefact yet): a
        # served model's load then skips the fork and the confinement (~20 ms).
        self._spare: _Worker | None = None
        self._spare_lock = threading.Lock()
        self._closed = False

    def warm_up(self) -> None:
        """Fork and confine the spare worker now (before the first load)."""
        self._refill()

    def _refill(self) -> None:
        with self._spare_lock:
            if self._spare is not None or self._closed:
                return
        try:
            worker = self._spawn("spare")
        except LoaderError as exc:  # a load then spawns its own worker and reports why it cannot
            print(f"loader: could not pre-fork a sandboxed worker: {exc}", file=sys.stderr, flush=True)
            return
        with self._spare_lock:
            if self._spare is None and not self._closed:
                self._spare, worker = worker, None  # type: ignore[assignment]
        if worker is not None:
            worker.end("not needed")

    def _take(self, name: str) -> _Worker:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        # Refilled a moment later, not beside the load that takes this one.
        run_in_background(self._refill, after=_REFILL_AFTER_SECONDS)
        if spare is not None and spare.alive():
            spare.name = name
            return spare
        if spare is not None:
            spare.end("ended while it waited")
        return self._spawn(name)

    def count(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers.values() if not w.ended)

    def start(self, artefact_fd: int, name: str, channel: bool = False) -> Served:
        """Fork and confine a worker, hand it the sealed artefact, wait until it has unpickled it.
        With `channel`, it also gets one end of a socket pair; the other is the Served's, for the
        caller: the worker serves on it as on its socket to the loader, and ends when it closes."""
        with self._lock:
            if sum(1 for w in self._workers.values() if not w.ended) >= self.limits.max_workers:
                raise LimitExceeded(f"this loader serves {self.limits.max_workers} models already; unload one first")
        started = time.perf_counter()
        worker = self._take(name)
        timings = {"worker_start": time.perf_counter() - started}
        ours: socket.socket | None = None
        try:
            fds = [artefact_fd]
            if channel:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                fds.append(theirs.fileno())
            try:
                socket.send_fds(worker.sock, [b"m"], fds)
            finally:
                if channel:
                    theirs.close()
            t0 = time.perf_counter()
            header, _ = self._read(worker, _UNPICKLE_SECONDS, 0)
            timings["worker_unpickle"] = time.perf_counter() - t0
            if header.get("ok") is not True:
                if header.get("limit") == "memory":
                    raise LimitExceeded(f"unpickling exceeded the worker's memory limit of {self.limits.memory_bytes} bytes")
                raise UnpicklingFailed(
                    f"unpickling the verified artefact failed in the worker: {unpickling_error(reported_text(header.get('error')))}"
                )
            methods = header.get("methods")
            if not isinstance(methods, list) or not set(methods) <= set(METHODS):
                raise WorkerFailed("the worker sent a malformed list of methods")
            if not methods:
                # What a payload returns after doing its work (an exit status, None) is no model.
                kind = str(header.get("type", "?"))[:200]
                raise UnpicklingFailed(
                    f"the verified artefact unpickles to {kind}, which has none of {', '.join(METHODS)}: "
                    "not a model that can be served"
                )
        except WorkerFailed as exc:
            worker.end(str(exc))
            if ours is not None:
                ours.close()
            # While it unpickles, the worker runs only the artefact: its crash is the artefact's.
            raise UnpicklingFailed(f"unpickling the verified artefact failed in the worker: {exc}") from None
        except BaseException as exc:
            worker.end(str(exc))
            if ours is not None:
                ours.close()
            raise
        handle = secrets.token_hex(24)
        with self._lock:
            self._workers[handle] = worker
        worker.tail.on_exit = lambda: self._reap(handle, worker)
        if not worker.alive():
            self._reap(handle, worker)
        return Served(handle, tuple(methods), self.limits, timings, ours)

    def _reap(self, handle: str, worker: _Worker) -> None:
        """A served worker exited on its own. One that exited cleanly saw its direct channel close
        (the process holding it has gone): it is forgotten. Any other keeps its place until the
        next request reports the cause, or until Unload."""
        if worker.wait(5) != 0:
            return
        with self._lock:
            if self._workers.get(handle) is worker:
                del self._workers[handle]
            else:
                return
        with worker.lock:  # a request under way reports the exit first
            worker.end("its direct channel was closed (the process that held it has gone)")
        print(f"loader: ended the sandboxed worker of {worker.name!r}: its client has gone", file=sys.stderr, flush=True)

    def _spawn(self, name: str) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output_r, output_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run_worker,
            args=(PassedFd(theirs.fileno()), output_w, self._child_limits, self.user_code),
            daemon=True,
            name=f"served-{name}"[:60],
        )
        try:
            proc.start()
        finally:
            theirs.close()
            output_w.close()
        worker = _Worker(proc, ours, _Tail(output_r), name)
        try:
            header, _ = self._read(worker, _START_SECONDS, 0)
        except BaseException:
            worker.end("did not start")
            raise
        if header.get("ready") is not True:
            worker.end("refused to start")
            raise UnpicklingFailed(f"the sandboxed worker refused to run: {reported_text(header.get('error'))}")
        return worker

    def predict(self, handle: str, header: dict[str, Any], buffers: Iterable[bytes]) -> tuple[dict[str, Any], bytearray]:
        """Send one request to the model's worker; its header ({dtype, shape}) and raw output."""
        with self._lock:
            worker = self._workers.get(handle)
        if worker is None:
            raise NotFound("no model is served under this handle (unloaded, or the loader restarted): load it again")
        with worker.lock:
            if worker.ended:
                raise WorkerFailed(f"the sandboxed worker of {worker.name!r} has ended ({worker.ended}): load the model again")
            if _answered_unasked(worker.sock):
                # Its next answer would be read as this request's: another caller's data.
                worker.end("answered no request")
                raise WorkerFailed("the sandboxed worker sent an answer to no request (out of step); it was ended: load the model again")
            try:
                _send_on(worker.sock, Payload(header, tuple(buffers)), self.limits.deadline_seconds)
            except TimeoutError:
                worker.end("deadline")
                raise PredictDeadline("the model did not take its input within the deadline; its worker was ended") from None
            except OSError as exc:
                # A closed socket is the worker gone (its exit may not be reported yet).
                if worker.alive() and exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    worker.end(f"the request could not be sent: {exc}")
                    raise WorkerFailed(f"the request could not be sent to the sandboxed worker: {exc}") from None
                raise self._failed(worker) from None
            answer, body = self._read(worker, self.limits.deadline_seconds, self.limits.max_output_bytes)
        if answer.get("ok") is not True:
            if answer.get("limit") == "memory":
                worker.end("memory limit")
                raise LimitExceeded(
                    f"the model went past its memory limit of {self.limits.memory_bytes} bytes; its worker was ended"
                )
            if "refused" in answer:
                raise WorkerFailed(f"the model's answer cannot be passed on: {reported_text(answer['refused'])}")
            raise ModelRaised(f"the model raised: {reported_text(answer.get('error'))}")
        return answer, body

    def unload(self, handle: str) -> bool:
        with self._lock:
            worker = self._workers.pop(handle, None)
        if worker is None:
            return False
        worker.end("unloaded")
        return True

    def close(self) -> None:
        with self._spare_lock:
            self._closed = True
            spare, self._spare = self._spare, None
        with self._lock:
            workers = list(self._workers.values()) + ([spare] if spare is not None else [])
            self._workers.clear()
        for worker in workers:
            worker.end("the loader stopped")

    def _failed(self, worker: _Worker) -> WorkerFailed:
        worker.sock.close()
        cause = worker.cause()
        worker.end(f"it {cause}")
        return WorkerFailed(f"the sandboxed worker of {worker.name!r} {cause}")

    def _read(self, worker: _Worker, seconds: float, max_body: int) -> tuple[dict[str, Any], bytearray]:
        """One framed message from the worker within `seconds`, its body at most `max_body` bytes;
        anything else ends the worker."""
        deadline = time.monotonic() + seconds
        try:
            head = _recv_exact(worker.sock, FRAME.size, deadline)
            if head is None:
                raise self._failed(worker)
            header_len, body_len = FRAME.unpack(head)
            if header_len > MAX_FRAME_HEADER:
                worker.end("oversized header")
                raise WorkerFailed("the sandboxed worker sent an oversized header; it was ended")
            if body_len > max_body:
                worker.end("oversized answer")
                raise WorkerFailed(
                    f"the model's answer is {body_len} bytes, over the limit of {max_body}; its worker was ended"
                )
            raw = _recv_exact(worker.sock, header_len, deadline)
            body = _recv_exact(worker.sock, body_len, deadline)
            if raw is None or body is None:
                raise self._failed(worker)
        except TimeoutError:
            worker.end("deadline")
            raise PredictDeadline(
                f"the model did not answer within {seconds:g} s; its worker was ended (load the model again)"
            ) from None
        header = load_header(raw)
        if header is None:
            worker.end("malformed header")
            raise WorkerFailed("the sandboxed worker sent a malformed header; it was ended")
        return header, body


def _answered_unasked(sock: socket.socket) -> bool:
    """Whether the worker has sent bytes no request asked for (between requests nothing is due)."""
    sock.settimeout(0)  # with a timeout set, Python polls for input first, MSG_DONTWAIT or not
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False  # a broken socket: the send below reports it


def _send_on(sock: socket.socket, payload: Payload, seconds: float) -> None:
    """Send `payload` within `seconds`, with sendmsg: the loader container's seccomp profile
    (runtime/seccomp-loader.json) has no sendto, which `socket.sendall` uses."""
    deadline = time.monotonic() + seconds
    for buffer in (frame(payload), *payload.buffers):
        view = memoryview(buffer).cast("B")
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            view = view[sock.sendmsg([view]) :]


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytearray | None:
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        try:
            k = sock.recv_into(view[got:])
        except TimeoutError:
            raise
        except OSError:
            return None
        if k == 0:
            return None
        got += k
    return data
