"""Sealed in-memory files: the artefact and the converted model live in these, never in copies.

A memfd is filled once, then sealed (no write, grow or shrink by anyone, the loader included),
so the bytes that were hashed are the bytes a child reads and the bytes a client maps.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import mmap
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import blake3

from loader.background import close_in_background
from loader.contract import map_sealed

_COPY_CHUNK = 16 << 20
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class SealedFile:
    """A sealed memfd and its size; the descriptor is closed when the object goes away."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._finalizer = weakref.finalize(self, close_in_background, fd)

    def mapped(self, populate: bool = False) -> mmap.mmap | memoryview:
        """A read-only view of the contents (an mmap; an empty memoryview for an empty file).

        `populate` maps every page at once; that holds the GIL meanwhile (tens of milliseconds
        for a large model, stalling the loader's other threads), so hashing does not ask for it:
        its page faults happen while hashlib or BLAKE3 has let go of the GIL."""
        if self.size == 0:
            return memoryview(b"")
        return map_sealed(self.fd, self.size, populate)

    def head(self, n: int) -> bytes:
        """The first `n` bytes, without mapping the file."""
        return os.pread(self.fd, n, 0)

    def read(self) -> bytes:
        """The whole contents as bytes (a copy: for small files and tests)."""
        with self.mapped() as view:
            return bytes(view)

    def close(self) -> None:
        self._finalizer()


def sha256_of(sealed: SealedFile) -> str:
    """Hex SHA-256 of the contents, hashed straight from the mapping (no copy)."""
    with sealed.mapped() as view:
        return hashlib.sha256(view).hexdigest()


def blake3_of(sealed: SealedFile) -> str:
    """Hex BLAKE3 of the contents, from the mapping, on one thread: the client reads the model
    on another core meanwhile."""
    with sealed.mapped() as view:
        return blake3.blake3(view, max_threads=1).hexdigest()


def new_memfd(name: str) -> int:
    """A fresh, unsealed memfd that can be sealed later."""
    return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def seal(fd: int) -> SealedFile:
    """Seal `fd` for good and wrap it; fails (EBUSY) while anyone still maps it writable."""
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    return SealedFile(fd, os.fstat(fd).st_size)


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _send(source: int, sink: int, start: int, end: int) -> int:
    """sendfile bytes [start, end) of `source` to the current offset of `sink`; returns `end`."""
    copied = start
    while copied < end:
        n = os.sendfile(sink, source, copied, end - copied)
        if n == 0:
            raise ValueError(f"it shrank to {copied} bytes while it was read")
        copied += n
    return copied


def preallocate(fd: int, size: int) -> threading.Thread | None:
    """Allocate `size` bytes of pages for the (empty) memfd `fd` on a thread, without changing
    its size: whoever writes into it later only copies. Best effort; join before sealing.
    None for less than `_COPY_CHUNK`, where starting the thread costs more than it saves."""
    if size < _COPY_CHUNK:
        return None

    def allocate() -> None:
        _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, size)  # ctypes lets go of the GIL

    thread = threading.Thread(target=allocate, daemon=True, name="preallocate")
    thread.start()
    return thread


def release_beyond_end(fd: int, allocated: int) -> None:
    """Give back pages `preallocate` reserved past the end of what was written."""
    end = os.fstat(fd).st_size
    if allocated > end:
        _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, end, allocated - end)


def copy_from(source: int, size: int, name: str) -> tuple[SealedFile, str]:
    """Copy exactly `size` bytes of `source` into a sealed memfd (in the kernel) and SHA-256
    them in the same pass: each chunk is hashed on a second thread, from a read-only mapping of
    the memfd, while the next one is copied (sendfile and hashlib both let go of the GIL).
    Returns the file and the hex digest of exactly the bytes it holds.

    Raises ValueError if `source` turns out shorter or longer than `size` while it is copied.
    """
    fd = new_memfd(name)
    hasher = hashlib.sha256()
    try:
        if size:
            os.ftruncate(fd, size)  # mapped whole up front; sendfile fills it from offset 0
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mapping, memoryview(mapping) as view:
                _copy_hashing(source, fd, view, hasher)
        if os.pread(source, 1, size):
            raise ValueError("it grew while it was read")
        return seal(fd), hasher.hexdigest()
    except BaseException:
        os.close(fd)
        raise


def _copy_hashing(source: int, sink: int, view: memoryview, hasher: Any) -> None:
    size = len(view)
    if size <= _COPY_CHUNK:  # one chunk: a thread would cost more than it overlaps
        _send(source, sink, 0, size)
        hasher.update(view)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="hash") as pool:
        pending: Future[None] | None = None
        copied = 0
        try:
            while copied < size:
                end = min(size, copied + _COPY_CHUNK)
                start = copied
                copied = _send(source, sink, start, end)
                if pending is not None:
                    pending.result()  # digests must be fed in order
                pending = pool.submit(hasher.update, view[start:end])
        finally:
            if pending is not None:
                pending.result()
