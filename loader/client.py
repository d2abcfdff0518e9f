"""The one client of the VerifyAndLoad contract, used by the MLServer runtime and the CLI.

It knows only the gRPC contract (`loader.proto.v1`): it sends a request, reads the header and
the model, and checks that the model matches the header. Over a Unix socket the model arrives
as a sealed memfd passed on the side channel `<socket>.fd` (no copy through gRPC); otherwise it
is streamed in chunks. Either way the bytes stay untrusted data.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import mmap
import os
import socket
import stat
import weakref
from pathlib import Path
from typing import Any, BinaryIO

import blake3
import grpc

from loader.proto.v1 import loader_pb2, loader_pb2_grpc

FD_SOCKET_SUFFIX = ".fd"
_SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_HASH_CHUNK = 8 << 20


class LoaderCallError(Exception):
    """The call failed: a refusal from the loader (with its gRPC code) or a broken reply."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large


def fd_socket_for(endpoint: str) -> Path | None:
    """The side-channel socket that passes descriptors for a `unix:` endpoint; None otherwise."""
    for prefix in ("unix://", "unix:"):
        if endpoint.startswith(prefix):
            return Path(endpoint[len(prefix) :] + FD_SOCKET_SUFFIX)
    return None


class FetchedModel:
    """Model bytes from the loader (untrusted until validated) and the header describing them.

    `data` is a read-only buffer: a private mapping of the passed memfd, or the streamed bytes.
    `open()` gives a seekable binary file over the same bytes, which lets a reader take what it
    needs without first holding the whole model in this process.
    """

    def __init__(self, header: loader_pb2.LoadedModel, data: bytes | None = None, fd: int = -1) -> None:
        self.header = header
        self._bytes = data
        self._fd = fd
        self._map: mmap.mmap | None = None
        if fd >= 0:
            weakref.finalize(self, os.close, fd)

    @property
    def data(self) -> bytes | mmap.mmap:
        if self._bytes is not None:
            return self._bytes
        if self._map is None:
            self._map = _map(self._fd, self.header.size)
        return self._map

    def open(self) -> BinaryIO:
        """A new seekable read-only file over the model bytes."""
        if self._bytes is not None:
            return io.BytesIO(self._bytes)
        try:
            # A new open file description: its own offset, whoever else reads the memfd.
            return open(f"/proc/self/fd/{self._fd}", "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            return os.fdopen(os.dup(self._fd), "rb")

    def close(self) -> None:
        """Drop the mapping now rather than when the object is collected."""
        if self._map is not None:
            self._map.close()
            self._map = None


def _map(fd: int, size: int) -> mmap.mmap:
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)


def _check_passed_fd(fd: int, header: loader_pb2.LoadedModel) -> None:
    """The passed descriptor must be a sealed regular file of the announced size and digest."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LoaderCallError("the loader passed a descriptor that is not a regular file")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0
    if seals & _SEALED != _SEALED:
        raise LoaderCallError("the loader passed a model file that is not sealed against changes")
    if info.st_size != header.size:
        raise LoaderCallError("the model file passed does not have the size in the loader's header")
    hasher = _hasher_for(header)
    # Read through one small buffer rather than mapped: the model's pages never count towards
    # this process's memory.
    buffer = bytearray(min(header.size, _HASH_CHUNK) or 1)
    view = memoryview(buffer)
    offset = 0
    while offset < header.size:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise LoaderCallError("the model file passed is shorter than the loader's header says")
        hasher.update(view[:n])
        offset += n
    _check_digest(hasher, header)


def _hasher_for(header: loader_pb2.LoadedModel) -> Any:
    if header.model_blake3:
        # Threads pay off on large models only (starting them costs milliseconds).
        return blake3.blake3(max_threads=blake3.blake3.AUTO if header.size >= _HASH_CHUNK else 1)
    if header.model_sha256:
        return hashlib.sha256()
    raise LoaderCallError("the loader's header names no digest of the model")


def _check_digest(hasher: Any, header: loader_pb2.LoadedModel) -> None:
    if hasher.hexdigest() != (header.model_blake3 or header.model_sha256):
        raise LoaderCallError("the model bytes received do not match the loader's header")


def receive_fd(path: Path, handle: str, timeout: float) -> int:
    """Claim the descriptor offered under `handle` on the side-channel socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(path))
            conn.sendall(handle.encode() + b"\n")
            message, fds, _, _ = socket.recv_fds(conn, 512, 1)
        except OSError as exc:
            raise LoaderCallError(
                f"UNAVAILABLE at {path}: could not receive the model descriptor: {exc}",
                code=grpc.StatusCode.UNAVAILABLE,
            ) from None
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        reason = message.decode(errors="replace").strip() or "no descriptor"
        raise LoaderCallError(f"the loader did not pass the model: {reason}")
    return fds[0]


def _claim(path: Path, header: loader_pb2.LoadedModel, timeout: float) -> FetchedModel:
    fd = receive_fd(path, header.fd_handle, timeout)
    try:
        _check_passed_fd(fd, header)
    except BaseException:
        os.close(fd)
        raise
    return FetchedModel(header, fd=fd)


def _joined(header: loader_pb2.LoadedModel, chunks: list[bytes]) -> FetchedModel:
    data = b"".join(chunks)
    chunks.clear()
    if len(data) != header.size:
        raise LoaderCallError("the model bytes received do not match the loader's header")
    hasher = _hasher_for(header)
    hasher.update(data)
    _check_digest(hasher, header)
    return FetchedModel(header, data=data)


async def verify_and_load(
    endpoint: str, request: loader_pb2.VerifyAndLoadRequest, timeout: float, max_bytes: int
) -> FetchedModel:
    """Call VerifyAndLoad at `endpoint`; return the model once size and digest match.

    On a Unix socket whose side channel exists the model is passed as a sealed memfd;
    otherwise (TCP, or an older loader) it is streamed.
    """
    options = [
        ("grpc.max_receive_message_length", 4 << 20),
        # A fresh connection per load: a loader restarted a moment ago is reached at once,
        # not after the reconnect backoff of a failure remembered in gRPC's global pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    side_channel = fd_socket_for(endpoint)
    asked = loader_pb2.VerifyAndLoadRequest()
    asked.CopyFrom(request)
    asked.accept_blake3 = True
    asked.accept_fd = side_channel is not None and side_channel.is_socket()
    request = asked
    header: loader_pb2.LoadedModel | None = None
    chunks: list[bytes] = []
    async with grpc.aio.insecure_channel(endpoint, options=options) as channel:
        stub = loader_pb2_grpc.LoaderStub(channel)
        try:
            received = 0
            async for message in stub.VerifyAndLoad(request, timeout=timeout, wait_for_ready=False):
                if message.WhichOneof("part") == "header":
                    header = message.header
                    if header.size > max_bytes:
                        raise LoaderCallError(
                            f"the loader returned a {header.size}-byte model; the limit is {max_bytes}",
                            too_large=True,
                        )
                    continue
                received += len(message.chunk)
                if header is None or header.fd_handle or received > header.size:
                    raise LoaderCallError("the loader sent more model bytes than announced")
                chunks.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            where = f" at {endpoint}" if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else ""
            raise LoaderCallError(f"{code.name}{where}: {exc.details()}", code=code) from None
    if header is None:
        raise LoaderCallError("the loader closed the stream without a model")
    # Hashing a large model takes a while: off the caller's event loop (hashlib frees the GIL).
    if header.fd_handle:
        if side_channel is None:
            raise LoaderCallError("the loader offered a descriptor on an endpoint that cannot pass one")
        return await asyncio.to_thread(_claim, side_channel, header, min(timeout, 30.0))
    return await asyncio.to_thread(_joined, header, chunks)
