"""Run a confined child for one verified artefact and collect its skops form in a sealed memfd.

Children are forked from a multiprocessing fork server that preloads scikit-learn and skops
and never sees untrusted bytes. A small pool of children is kept forked ahead of time, each
already under its limits and syscall filter and waiting for a descriptor; each serves exactly
one artefact and exits, and the pool refills in the background. The parent (this process)
reads only length-capped byte messages from a child: nothing it sends is unpickled here.
"""

from __future__ import annotations

import collections
import errno
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from typing import Any

from loader._internal.child import NO_TYPES, REPORT_TYPES, ChildLimits, PassedFd, ready_message, run
from loader._internal.confine import landlock_status, unpickling_error
from loader._internal.memfd import SealedFile, blake3_of, new_memfd, preallocate, release_beyond_end, seal, sha256_of
from loader.background import run_in_background
from loader.contract import load_header, reported_text
from loader.errors import LimitExceeded, UnpicklingFailed

# What the fork server imports before it forks a child (scripts/record-syscalls.py adds its own).
FORKSERVER_PRELOAD = ["loader._internal.preload"]
_START_SECONDS = 60  # the first child waits for the fork server's imports
# While a child is still waiting in the pool, a refill waits this long (or until the pool runs
# dry): forking, confining and warming a child would otherwise compete for the CPU with the
# load that just took one, while its client reads the result.
_REFILL_DELAY_SECONDS = 0.1
# A child whose result is smaller than this is ended a moment after its result is sealed rather
# than at once: tearing its address space down takes a core for milliseconds, which the client
# reading the model needs more. A larger model's child is ended at once (its memory counts).
_END_LATER_BELOW = 8 << 20
_END_AFTER_SECONDS = 0.05

# Formats people hand over instead of a pickle, by their first bytes. A pickle (protocol 2+)
# starts with 0x80; joblib's compressed files with zlib, gzip, bz2, xz, lzma or lz4 magic.
_NOT_PICKLES = (
    (b"PK\x03\x04", "a zip archive (a wheel, a .skops file, a PyTorch .pt or a NumPy .npz)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x7fELF", "an ELF executable or shared library"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. a Keras .h5)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"GGUF", "a GGUF model"),
    (b"\x08\x01\x12", "an ONNX (protobuf) model"),
    (b"{", "a JSON document"),
)


def not_a_pickle(head: bytes) -> str | None:
    """What the file is if its first bytes show it is certainly not a pickle or joblib file."""
    for magic, what in _NOT_PICKLES:
        if head.startswith(magic):
            return what
    if len(head) >= 10 and head[8:10] == b'{"':
        return "a safetensors file"
    return None


@dataclass(frozen=True)
class SandboxLimits(ChildLimits):
    """Hard limits for one confined unpickling: the child's own, plus what the parent enforces."""

    wall_seconds: float = 60.0
    max_output_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Converted:
    """The model as a sealed memfd of skops bytes, with what the child reported about it."""

    model: SealedFile
    untrusted_types: list[str] | None  # None: not asked for
    timings: dict[str, float] = field(default_factory=dict)
    output: str = ""
    _digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def digest(self, algorithm: str) -> str:
        """Hex digest ("blake3" or "sha256") of the model bytes, taken once per algorithm."""
        if algorithm not in self._digests:
            self._digests[algorithm] = (blake3_of if algorithm == "blake3" else sha256_of)(self.model)
        return self._digests[algorithm]

    @property
    def size(self) -> int:
        return self.model.size

    @property
    def skops_bytes(self) -> bytes:
        """A copy of the skops bytes (for small models and tests; the service passes `model`)."""
        return self.model.read()


class _CappedReader:
    """Drains a pipe on a thread, keeping only the first `cap` bytes."""

    def __init__(self, conn: Connection, cap: int) -> None:
        self._conn = conn
        self._cap = cap
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True, name="child-output")
        self._thread.start()

    def _drain(self) -> None:
        fd = self._conn.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            if len(self._kept) < self._cap:
                self._kept += chunk[: self._cap - len(self._kept)]

    def text(self, wait: float = 0.2) -> str:
        self._thread.join(wait)
        return bytes(self._kept).decode(errors="replace")

    def close(self) -> None:
        self._thread.join(1)
        self._conn.close()


@dataclass
class _Child:
    """A forked, confined child waiting in recvmsg on `control`."""

    proc: Any  # multiprocessing's forkserver Process
    control: socket.socket
    status: Connection
    output: _CappedReader

    def discard(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.proc.close()
        self.control.close()
        self.status.close()
        self.output.close()


class Sandbox:
    """Hands each artefact to a fresh pre-forked confined child; never reuses one."""

    def __init__(self, limits: SandboxLimits | None = None, pool_size: int = 2) -> None:
        self.limits = limits or SandboxLimits()
        self.pool_size = max(0, pool_size)
        # BLAS thread pools are started at import in the fork server; a child cannot add threads.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        # libgomp reads this once, when the fork server loads it: a model that asks OpenMP for more
        # threads (LightGBM's n_jobs=4) gets one, where the refused thread would end the process.
        os.environ["OMP_THREAD_LIMIT"] = "1"
        self._child_limits = ChildLimits(**{f.name: getattr(self.limits, f.name) for f in fields(ChildLimits)})
        # What the loader announces (log, health details); every child must report the same.
        self._landlock = landlock_status()
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        self._ready: collections.deque[_Child] = collections.deque()
        self._cond = threading.Condition()
        self._spawn_lock = threading.Lock()
        self._closed = False
        self._refiller: threading.Thread | None = None

    def warm_up(self) -> None:
        """Start the fork server (imports take seconds) and fill the pool before the first load."""
        self._ensure_refiller()
        with self._cond:
            self._cond.wait_for(lambda: len(self._ready) >= self.pool_size or self._closed, timeout=120)

    def close(self) -> None:
        """Stop refilling and end the waiting children."""
        with self._cond:
            self._closed = True
            waiting = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        for child in waiting:
            child.discard()

    def _ensure_refiller(self) -> None:
        with self._cond:
            if self._refiller is None and self.pool_size:
                self._refiller = threading.Thread(target=self._refill, daemon=True, name="child-pool")
                self._refiller.start()

    def _refill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._ready) < self.pool_size)
                if self._ready:
                    self._cond.wait_for(lambda: self._closed or not self._ready, timeout=_REFILL_DELAY_SECONDS)
                if self._closed:
                    return
            try:
                child = self._spawn()
            except Exception as exc:  # noqa: BLE001 - a load then spawns its own child and reports it
                print(f"loader: could not pre-fork a confined child: {exc}", file=sys.stderr, flush=True)
                time.sleep(1)
                continue
            with self._cond:
                if self._closed:
                    child.discard()
                    return
                self._ready.append(child)
                self._cond.notify_all()

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status_r, status_w = self._ctx.Pipe(duplex=False)
        output_r, output_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run,
            # ChildLimits, not SandboxLimits: unpickling the latter would make every child import
            # this module (and gRPC) before it is confined; the fork server has the former.
            args=(PassedFd(theirs.fileno()), status_w, output_w, self._child_limits),
            daemon=True,
            name="confined-unpickle",
        )
        try:
            with self._spawn_lock:  # one fork-server request at a time
                proc.start()
        finally:
            theirs.close()
            status_w.close()
            output_w.close()
        child = _Child(proc, ours, status_r, _CappedReader(output_r, self.limits.max_output_bytes))
        # Only a child that reports itself confined joins the pool or gets an artefact.
        try:
            if not status_r.poll(_START_SECONDS):
                raise UnpicklingFailed(f"the confined child did not start within {_START_SECONDS} s")
            message = status_r.recv_bytes(1 << 16)
            if message != ready_message(self._landlock):
                raise self._early_failure(message)
        except (EOFError, OSError):
            error = self._died(child)
            child.discard()
            raise error from None
        except BaseException:
            child.discard()
            raise
        return child

    def _take(self) -> _Child:
        self._ensure_refiller()
        with self._cond:
            child = self._ready.popleft() if self._ready else None
        return child if child is not None else self._spawn()

    def _refill_now(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def convert(
        self, artefact: SealedFile, report_types: bool = True, on_sealed: Callable[[SealedFile], None] | None = None
    ) -> Converted:
        """Unpickle the sealed `artefact` in a fresh confined child; return the skops conversion
        (with skops' untrusted types if `report_types`). `on_sealed` is called with the result as
        soon as it is sealed and checked, before the child is ended and the pool refilled."""
        what = not_a_pickle(artefact.head(16))
        if what is not None:
            raise UnpicklingFailed(
                f"the artefact is {what}, not a pickle: a pickle or joblib file (joblib.dump) was expected"
            )
        limits = self.limits
        child = self._take()
        sink = new_memfd("skops-result")
        # The result is about as large as the artefact for array-heavy models: its pages are
        # allocated on another core while the child unpickles, so its writes only copy.
        reserved = min(artefact.size, limits.max_result_bytes)
        reserving = preallocate(sink, reserved)
        started = time.perf_counter()
        try:
            try:
                socket.send_fds(child.control, [REPORT_TYPES if report_types else NO_TYPES], [artefact.fd, sink])
            except OSError:
                raise self._died(child) from None
            child.control.close()
            header = self._receive(child, started)
            if header is None:
                raise self._died(child)
            meta = self._parse(header)
            # All the child said is checked before its result goes anywhere.
            untrusted, timings = self._reported(meta)
            if reserving is not None:
                reserving.join()
                release_beyond_end(sink, reserved)
            # Sealed while the child waits to be ended: once sealed, the result cannot change,
            # even through a descriptor the child still holds. Ended only then: its teardown
            # (milliseconds, with scikit-learn mapped) would hold up the seal, which waits for
            # the CPU the child wrote from.
            model = self._seal(sink, child)
            if model.size >= _END_LATER_BELOW:
                child.proc.kill()
            sink = -1
            if model.size > limits.max_result_bytes:
                raise LimitExceeded(f"the converted model is {model.size} bytes; the limit is {limits.max_result_bytes}")
            if on_sealed is not None:
                on_sealed(model)
            timings["child_total"] = time.perf_counter() - started
            return Converted(model, untrusted, timings, child.output.text(wait=0))
        finally:
            # Reaping a large child takes a while (its address space is torn down): not on this path.
            run_in_background(child.discard, after=_END_AFTER_SECONDS if child.proc.is_alive() else 0.0)
            # Refilled once this child is done, not while it works (and, with another child
            # still waiting, a moment later): a new child would compete with it for the CPU.
            self._refill_now()
            if sink >= 0:
                if reserving is not None:
                    reserving.join()
                os.close(sink)

    @staticmethod
    def _seal(sink: int, child: _Child) -> SealedFile:
        try:
            return seal(sink)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
        # The child mapped the result writable: the seal holds once that mapping is gone.
        child.proc.kill()
        child.proc.join(5)
        return seal(sink)

    @staticmethod
    def _reported(meta: dict[str, Any]) -> tuple[list[str] | None, dict[str, float]]:
        """The untrusted types and stage timings in the child's result header, or a refusal."""
        untrusted = meta.get("untrusted_types")
        if untrusted is not None and (not isinstance(untrusted, list) or not all(isinstance(t, str) for t in untrusted)):
            raise UnpicklingFailed("the confined child reported malformed type information")
        reported = meta.get("timings", {})
        if not isinstance(reported, dict) or not all(
            isinstance(k, str) and type(v) in (int, float) for k, v in reported.items()
        ):
            raise UnpicklingFailed("the confined child reported malformed stage timings")
        return untrusted, {k: float(v) for k, v in reported.items()}

    def _parse(self, header: bytes) -> dict[str, Any]:
        meta = load_header(header)
        if meta is None:
            raise UnpicklingFailed("the confined child sent a malformed result header")
        if meta.get("ok") is not True:
            if meta.get("limit") == "memory":
                raise LimitExceeded(f"unpickling exceeded the memory limit of {self.limits.memory_bytes} bytes")
            raise UnpicklingFailed(f"unpickling the verified artefact failed: {unpickling_error(reported_text(meta.get('error')))}")
        return meta

    def _early_failure(self, message: bytes) -> Exception:
        meta = load_header(message)
        error = reported_text(meta["error"]) if meta is not None and meta.get("error") else None
        if meta is not None and meta.get("ready") is True and "landlock" in meta:
            error = (
                f"the child applied {reported_text(meta['landlock'], 200)!r}, not what the loader announced "
                f"({self._landlock!r}); the fork server and the loader disagree on the confinement"
            )
        return UnpicklingFailed(f"the sandbox refused to run: {error or 'the child sent a malformed message'}")

    def _receive(self, child: _Child, started: float) -> bytes | None:
        remaining = self.limits.wall_seconds - (time.perf_counter() - started)
        if remaining <= 0 or not child.status.poll(remaining):
            if child.proc.is_alive():
                child.proc.kill()
                raise LimitExceeded(
                    f"unpickling took longer than the wall-time limit of {self.limits.wall_seconds:g} s; "
                    "the child was killed"
                )
            return None
        try:
            return child.status.recv_bytes(1 << 20)
        except EOFError:
            return None
        except OSError:
            child.proc.kill()
            raise UnpicklingFailed("the confined child sent an oversized status message") from None

    def _died(self, child: _Child) -> Exception:
        child.proc.join(5)
        code = child.proc.exitcode
        tail = child.output.text()[-500:]
        detail = f"; it printed: {tail!r}" if tail else ""
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            if sig == "SIGXFSZ":
                return LimitExceeded(f"the converted model exceeds {self.limits.max_result_bytes} bytes{detail}")
            if sig == "SIGXCPU":
                return LimitExceeded(
                    f"unpickling exceeded the CPU-time limit of {self.limits.cpu_seconds} s ({sig}){detail}"
                )
            return UnpicklingFailed(f"the confined child was killed by {sig} while unpickling{detail}")
        return UnpicklingFailed(f"the confined child exited ({code}) without a result{detail}")
