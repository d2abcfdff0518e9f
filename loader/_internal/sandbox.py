"""Run the confined child for one verified artefact and collect its skops bytes.

Children are forked from a multiprocessing fork server that preloads scikit-learn and skops
and never sees untrusted bytes until they are handed to a child. The parent (this process)
reads only length-capped byte messages from the child: nothing it sends is unpickled here.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from loader._internal.child import ChildLimits, PassedFd, run
from loader.errors import LimitExceeded, UnpicklingFailed

_PRELOAD = ["loader._internal.preload"]


@dataclass(frozen=True)
class SandboxLimits(ChildLimits):
    """Hard limits for one confined unpickling: the child's own, plus what the parent enforces."""

    wall_seconds: float = 60.0
    max_output_bytes: int = 64 * 1024


@dataclass(frozen=True)
class Converted:
    """The model as skops bytes, with what the child reported about it."""

    skops_bytes: bytes
    untrusted_types: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    output: str = ""


class Sandbox:
    """Forks a confined child per artefact from a preloaded fork server."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        # BLAS thread pools are started at import in the fork server; a child cannot add threads.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)

    def warm_up(self) -> None:
        """Start the fork server now (imports take seconds) rather than on the first load."""
        self.convert_nothing()

    def convert_nothing(self) -> None:
        proc = self._ctx.Process(target=_noop, daemon=True)
        proc.start()
        proc.join()

    def convert(self, artefact: bytes | bytearray) -> Converted:
        """Unpickle `artefact` in a fresh confined child; return the skops conversion."""
        limits = self.limits
        source = _sealed_memfd("verified-artefact", artefact)
        sink = os.memfd_create("skops-result", os.MFD_CLOEXEC)
        status_r, status_w = self._ctx.Pipe(duplex=False)
        output_r, output_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run,
            args=(PassedFd(source), PassedFd(sink), status_w, output_w, limits),
            daemon=True,
            name="confined-unpickle",
        )
        started = time.perf_counter()
        try:
            proc.start()
        finally:
            os.close(source)
        status_w.close()
        output_w.close()
        output = _CappedReader(output_r, limits.max_output_bytes)
        try:
            header = self._receive(status_r, proc, started)
            if header is None:
                raise self._died(proc, output)
            try:
                meta = json.loads(header)
            except ValueError:
                raise UnpicklingFailed("the confined child sent a malformed result header") from None
            if not meta.get("ok"):
                if meta.get("limit") == "memory":
                    raise LimitExceeded(
                        f"unpickling exceeded the memory limit of {limits.memory_bytes} bytes"
                    )
                raise UnpicklingFailed(f"unpickling the verified artefact failed: {meta.get('error')}")
            # The child is done with the result once it is gone; read it only then.
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                raise UnpicklingFailed("the confined child did not exit after reporting its result")
            data = _read_result(sink, limits.max_result_bytes)
            untrusted = meta.get("untrusted_types", [])
            if not isinstance(untrusted, list) or not all(isinstance(t, str) for t in untrusted):
                raise UnpicklingFailed("the confined child reported malformed type information")
            timings = {k: float(v) for k, v in dict(meta.get("timings", {})).items()}
            timings["child_total"] = time.perf_counter() - started
            return Converted(data, untrusted, timings, output.text())
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            proc.close()
            status_r.close()
            output.close()
            os.close(sink)

    def _receive(self, conn, proc, started: float) -> bytes | None:  # type: ignore[no-untyped-def]
        remaining = self.limits.wall_seconds - (time.perf_counter() - started)
        if remaining <= 0 or not conn.poll(remaining):
            if proc.is_alive():
                proc.kill()
                raise LimitExceeded(
                    f"unpickling took longer than the wall-time limit of {self.limits.wall_seconds:g} s; "
                    "the child was killed"
                )
            return None
        try:
            return conn.recv_bytes(1 << 20)
        except EOFError:
            return None
        except OSError:
            proc.kill()
            raise UnpicklingFailed("the confined child sent an oversized status message") from None

    def _died(self, proc, output: _CappedReader) -> Exception:  # type: ignore[no-untyped-def]
        proc.join(5)
        code = proc.exitcode
        tail = output.text()[-500:]
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


class _CappedReader:
    """Drains a pipe on a thread, keeping only the first `cap` bytes."""

    def __init__(self, conn, cap: int) -> None:  # type: ignore[no-untyped-def]
        self._conn = conn
        self._cap = cap
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
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

    def text(self) -> str:
        self._thread.join(0.2)
        return bytes(self._kept).decode(errors="replace")

    def close(self) -> None:
        self._thread.join(1)
        self._conn.close()


def _sealed_memfd(name: str, data: bytes | bytearray) -> int:
    """An in-memory file holding `data` that nobody can change any more."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    return fd


def _read_result(fd: int, max_bytes: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > max_bytes:
        raise LimitExceeded(f"the converted model is {size} bytes; the limit is {max_bytes}")
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 64 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _noop() -> None:
    pass
