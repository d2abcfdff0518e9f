"""The one client of the VerifyAndLoad contract, used by the MLServer runtime and the CLI.

It knows only the gRPC contract (`loader.proto.v1`, `loader.contract`): it sends a request, reads the header and
the model, and checks that the model matches the header. Over a Unix socket the model arrives
as a sealed memfd passed on the side channel `<socket>.fd` (no copy through gRPC); otherwise it
is streamed in chunks. Either way the bytes stay untrusted data.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import hashlib
import io
import mmap
import os
import secrets
import socket
import stat
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import blake3
import grpc

from loader.background import close_in_background
from loader.contract import (
    DESCRIPTORS_REFUSED,
    FD_SOCKET_SUFFIX,
    FRAME,
    MAX_FRAME_HEADER,
    SANDBOX_TICKET_METADATA,
    WAIT_PREFIX,
    frame_head,
    load_header,
    map_sealed,
)
from loader.proto.v1 import loader_pb2, loader_pb2_grpc

_T = TypeVar("_T")
_SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_HASH_CHUNK = 8 << 20
# A claim of an offered handle is answered at once by a working loader.
_CLAIM_SECONDS = 30.0


# Reads the model from a file; must be safe on hostile bytes (see `verify_and_load`).
Consumer = Callable[[BinaryIO], Any]


class LoaderCallError(Exception):
    """The call failed: a refusal from the loader (with its gRPC code) or a broken reply."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, too_large: bool = False, sandbox_ticket: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large
        # The loader kept the verified bytes for Serve under this ticket (EXECUTION_AUTO, a model
        # its child could not convert).
        self.sandbox_ticket = sandbox_ticket


class DescriptorsRefused(LoaderCallError):
    """The loader's kernel will not pass a descriptor to this process: ask for the model streamed."""


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
        # What `verify_and_load(consume=...)` made of the bytes.
        self.consumed: Any = None
        # (algorithm, hex digest) the bytes were checked against.
        self.digest: tuple[str, str] = ("", "")
        if fd >= 0:
            weakref.finalize(self, close_in_background, fd)

    @property
    def data(self) -> bytes | mmap.mmap:
        if self._bytes is not None:
            return self._bytes
        if self._map is None:
            self._map = _map(self._fd, self.header.size)
        return self._map

    @property
    def fileno(self) -> int:
        """The passed memfd (-1 for streamed bytes)."""
        return self._fd

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
    return map_sealed(fd, size)


def _check_passed_fd(fd: int, header: loader_pb2.LoadedModel) -> None:
    """The passed descriptor must be a sealed regular file of the announced size and digest."""
    _check_sealed(fd, header.size)
    expected = _expected(header)
    _check_digest(_hash_fd(fd, header.size, expected[0]), expected)


def _check_sealed(fd: int, size: int | None) -> int:
    """Check the passed file is sealed (and of `size`, if given); return its size."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LoaderCallError("the loader passed a descriptor that is not a regular file")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0
    if seals & _SEALED != _SEALED:
        raise LoaderCallError("the loader passed a model file that is not sealed against changes")
    if size is not None and info.st_size != size:
        raise LoaderCallError("the model file passed does not have the size in the loader's header")
    return info.st_size


def _hasher(algorithm: str, size: int) -> Any:
    if algorithm == "blake3":
        # One thread: hashing runs beside the load (and the loader's own hashing), a core each.
        return blake3.blake3(max_threads=1)
    return hashlib.sha256()


def _hash_fd(fd: int, size: int, algorithm: str) -> str:
    """Digest of the file, read through one small buffer rather than mapped: the model's pages
    never count towards this process's memory."""
    hasher = _hasher(algorithm, size)
    view = memoryview(bytearray(min(size, _HASH_CHUNK) or 1))
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise LoaderCallError("the model file passed is shorter than the loader's header says")
        hasher.update(view[:n])
        offset += n
    return str(hasher.hexdigest())


def _expected(digest: loader_pb2.LoadedModel | loader_pb2.ModelDigest) -> tuple[str, str]:
    """(algorithm, hex digest) the loader announced in a header or in the last message."""
    blake3_hex = digest.model_blake3 if isinstance(digest, loader_pb2.LoadedModel) else digest.blake3
    sha256_hex = digest.model_sha256 if isinstance(digest, loader_pb2.LoadedModel) else digest.sha256
    if blake3_hex:
        return "blake3", blake3_hex
    if sha256_hex:
        return "sha256", sha256_hex
    raise LoaderCallError("the loader sent no digest of the model")


def _check_digest(actual: str, expected: tuple[str, str]) -> None:
    if actual != expected[1]:
        raise LoaderCallError("the model bytes received do not match the loader's header")


async def receive_fd(path: Path, handle: str, timeout: float, wait: bool = False, deadline: float | None = None) -> int:
    """Claim the descriptor offered under `handle` on the side-channel socket `path` (on the
    running event loop: a local socket needs no thread). With `wait`, `handle` is the request's
    `fd_claim` and the loader passes the model once it is ready. Gives up after `timeout`, or
    at `deadline` (the event loop's clock) if that comes first."""
    loop = asyncio.get_running_loop()
    line = (WAIT_PREFIX + handle if wait else handle).encode() + b"\n"
    end = loop.time() + timeout if deadline is None else min(loop.time() + timeout, deadline)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.setblocking(False)
        try:
            async with asyncio.timeout_at(end):
                await loop.sock_connect(conn, str(path))
                await loop.sock_sendall(conn, line)
                while True:
                    try:
                        message, fds, _, _ = socket.recv_fds(conn, 512, 1)
                        break
                    except BlockingIOError:
                        await _readable(loop, conn)
        except (OSError, TimeoutError) as exc:
            raise _unreachable(path, exc) from None
    return _only_fd(message, fds)


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())


def _unreachable(path: Path, exc: BaseException) -> LoaderCallError:
    return LoaderCallError(
        f"UNAVAILABLE at {path}: could not receive the model descriptor: {str(exc) or type(exc).__name__}",
        code=grpc.StatusCode.UNAVAILABLE,
    )


def _only_fd(message: bytes, fds: list[int]) -> int:
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        if message.startswith(DESCRIPTORS_REFUSED.encode()):
            raise DescriptorsRefused(f"the loader did not pass the model: {DESCRIPTORS_REFUSED}")
        reason = message.decode(errors="replace").strip() or "no descriptor"
        raise LoaderCallError(f"the loader did not pass the model: {reason}")
    return fds[0]


async def _claim(path: Path, header: loader_pb2.LoadedModel, deadline: float) -> FetchedModel:
    fetched = FetchedModel(header, fd=await _claim_fd(path, header, deadline))  # closes it when dropped
    if header.size < _HASH_CHUNK:
        # A small model is hashed in less time than a handoff to a worker thread takes.
        _check_passed_fd(fetched.fileno, header)
    else:
        await asyncio.to_thread(_check_passed_fd, fetched.fileno, header)
    fetched.digest = _expected(header)
    return fetched


class _Early:
    """A model claimed before its digest arrived: read (and hashed) while the loader hashes it."""

    def __init__(self, fetched: FetchedModel, digest: str, consumed: Any, error: BaseException | None) -> None:
        self.fetched, self.digest, self.consumed, self.error = fetched, digest, consumed, error


async def _claim_fd(path: Path, header: loader_pb2.LoadedModel, deadline: float) -> int:
    """Claim the header's handle, by the call's own deadline: a call never waits longer on the
    side channel than it was given in all (a wait that ran out leaves nothing for a claim)."""
    return await receive_fd(path, header.fd_handle, _CLAIM_SECONDS, deadline=deadline)


async def _claim_early(path: Path, header: loader_pb2.LoadedModel, deadline: float, consume: Consumer | None) -> _Early:
    fetched = FetchedModel(header, fd=await _claim_fd(path, header, deadline))
    _check_sealed(fetched.fileno, header.size)
    return await _in_thread(_read_early, fetched, consume)


async def _wait_for_model(
    path: Path, claim: str, deadline: float, consume: Consumer | None, max_bytes: int
) -> _Early | None:
    """Wait on the side channel for the model of the running call and read it at once (before
    its header has arrived); None if the loader did not pass it there."""
    try:
        fd = await receive_fd(path, claim, deadline - asyncio.get_running_loop().time(), wait=True, deadline=deadline)
    except DescriptorsRefused:
        raise
    except LoaderCallError:
        return None  # an older loader, or the offer came first: the header's handle is claimed
    # Provisional header: the size is checked against the loader's own when the header comes.
    fetched = FetchedModel(loader_pb2.LoadedModel(), fd=fd)
    size = _check_sealed(fd, None)
    if size > max_bytes:
        raise LoaderCallError(f"the loader returned a {size}-byte model; the limit is {max_bytes}", too_large=True)
    fetched.header.size = size
    if size >= _HASH_CHUNK:
        return await _in_thread(_read_early, fetched, consume)
    # A small model is hashed and read in less time than a handoff to a worker thread takes.
    return _Early(fetched, _hash_fd(fd, size, "blake3"), *_consumed(fetched, consume))


async def _pushed_or_claimed(
    waiting: asyncio.Task[_Early | None], path: Path, header: loader_pb2.LoadedModel, deadline: float, consume: Consumer | None
) -> _Early:
    done = await waiting
    if done is None:
        return await _claim_early(path, header, deadline, consume)
    _check_sealed(done.fetched.fileno, header.size)
    done.fetched.header = header
    return done


async def _in_thread(call: Callable[..., _T], *args: Any) -> _T:
    """`asyncio.to_thread`, except that a caller cancelled meanwhile waits for the thread (which
    cannot be stopped) before it gives up: nothing is left reading a model nobody will use."""
    running = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait([running])
        raise


def _read_early(fetched: FetchedModel, consume: Consumer | None) -> _Early:
    # The loader was asked for BLAKE3; hashed on a second thread while `consume` reads.
    with ThreadPoolExecutor(1, thread_name_prefix="model-digest") as pool:
        digest = pool.submit(_hash_fd, fetched.fileno, fetched.header.size, "blake3")
        consumed, error = _consumed(fetched, consume)
        return _Early(fetched, digest.result(), consumed, error)


def _consumed(fetched: FetchedModel, consume: Consumer | None) -> tuple[Any, Exception | None]:
    """What `consume` made of a model read before its digest arrived, or what it raised
    (reported only once the digest is known: a mismatch outranks it)."""
    if consume is None:
        return None, None
    try:
        return _consume(fetched, consume), None
    except Exception as exc:  # noqa: BLE001 - reported after the digest is known
        return None, exc


def _joined(header: loader_pb2.LoadedModel, chunks: list[bytes]) -> FetchedModel:
    data = b"".join(chunks)
    chunks.clear()
    if len(data) != header.size:
        raise LoaderCallError("the model bytes received do not match the loader's header")
    expected = _expected(header)
    hasher = _hasher(expected[0], len(data))
    hasher.update(data)
    _check_digest(str(hasher.hexdigest()), expected)
    fetched = FetchedModel(header, data=data)
    fetched.digest = expected
    return fetched


def _consume(fetched: FetchedModel, consume: Consumer) -> Any:
    with fetched.open() as file:
        return consume(file)


_OPTIONS = [
    ("grpc.max_receive_message_length", 4 << 20),
    # A failure remembered in gRPC's global subchannel pool would make a loader restarted a
    # moment ago wait out the reconnect backoff; each channel keeps its own.
    ("grpc.use_local_subchannel_pool", 1),
]
# One channel per (event loop, endpoint): a new connection costs milliseconds per load.
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, grpc.aio.Channel]] = (
    weakref.WeakKeyDictionary()
)
_GONE = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


def _channel(endpoint: str, reuse: bool) -> grpc.aio.Channel:
    if not reuse:
        return grpc.aio.insecure_channel(endpoint, options=_OPTIONS)
    kept = _channels.setdefault(asyncio.get_running_loop(), {})
    channel = kept.get(endpoint)
    if channel is None or channel.get_state() in _GONE:
        # A channel that failed reconnects only after a backoff: a fresh one connects at once.
        channel = kept[endpoint] = grpc.aio.insecure_channel(endpoint, options=_OPTIONS)
    return channel


def _forget(endpoint: str, channel: grpc.aio.Channel) -> None:
    kept = _channels.get(asyncio.get_running_loop(), {})
    if kept.get(endpoint) is channel:
        del kept[endpoint]


async def verify_and_load(
    endpoint: str,
    request: loader_pb2.VerifyAndLoadRequest,
    timeout: float,
    max_bytes: int,
    consume: Consumer | None = None,
    reuse_channel: bool = True,
) -> FetchedModel:
    """Call VerifyAndLoad at `endpoint`; return the model once size and digest match.

    On a Unix socket whose side channel exists the model is passed as a sealed memfd;
    otherwise (TCP, or an older loader), or if the loader's kernel will not pass a descriptor
    to this process (a loader under gVisor), it is streamed. `consume`, if given, is called with a
    file over the model bytes (on a worker thread; inline for models under 8 MiB) and its
    result kept in `FetchedModel.consumed`. Over a memfd it may run before the digest has arrived (the loader
    hashes while the client reads), so it must treat the bytes as hostile, as
    `runtime.safe_load.load_model` does; its result is returned only if the digest matches.
    The connection is kept for the next call on the same event loop unless `reuse_channel` is
    false (an endpoint used once).
    """
    # Everything on the side channel ends by the call's own deadline, however it is split.
    deadline = asyncio.get_running_loop().time() + timeout
    side_channel = fd_socket_for(endpoint)
    try:
        return await _verify_and_load(endpoint, request, deadline, side_channel, max_bytes, consume, reuse_channel)
    except DescriptorsRefused:
        # Asked once more, streamed (the loader streams its next calls by itself).
        return await _verify_and_load(endpoint, request, deadline, None, max_bytes, consume, reuse_channel)


async def _verify_and_load(
    endpoint: str,
    request: loader_pb2.VerifyAndLoadRequest,
    deadline: float,
    side_channel: Path | None,
    max_bytes: int,
    consume: Consumer | None,
    reuse_channel: bool,
) -> FetchedModel:
    timeout = max(deadline - asyncio.get_running_loop().time(), 0.001)
    asked = loader_pb2.VerifyAndLoadRequest()
    asked.CopyFrom(request)
    asked.accept_blake3 = True
    asked.accept_fd = asked.digest_after_handle = side_channel is not None and side_channel.is_socket()
    # The model is waited for on the side channel while the call runs: it arrives the moment
    # the loader has sealed it, and is read while the header and the digest are on their way.
    asked.fd_claim = secrets.token_hex(24) if asked.accept_fd else ""
    header: loader_pb2.LoadedModel | None = None
    trailer: loader_pb2.ModelDigest | None = None
    early: asyncio.Task[_Early] | None = None
    waiting: asyncio.Task[_Early | None] | None = None
    chunks: list[bytes] = []
    channel = _channel(endpoint, reuse_channel)
    call = loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(asked, timeout=timeout, wait_for_ready=False)
    if asked.fd_claim and side_channel is not None:
        waiting = asyncio.create_task(_wait_for_model(side_channel, asked.fd_claim, deadline, consume, max_bytes))
    try:
        received = 0
        async for message in call:
            part = message.WhichOneof("part")
            if part == "header" and header is None:
                header = message.header
                if header.size > max_bytes:
                    raise LoaderCallError(
                        f"the loader returned a {header.size}-byte model; the limit is {max_bytes}",
                        too_large=True,
                    )
                if header.fd_handle and waiting is not None and header.fd_handle == asked.fd_claim:
                    early = asyncio.create_task(
                        _pushed_or_claimed(waiting, side_channel, header, deadline, consume)  # type: ignore[arg-type]
                    )
                    waiting = None
                elif header.fd_handle and not (header.model_blake3 or header.model_sha256):
                    if side_channel is None:
                        raise LoaderCallError("the loader offered a descriptor on an endpoint that cannot pass one")
                    early = asyncio.create_task(_claim_early(side_channel, header, deadline, consume))
            elif part == "digest" and early is not None and trailer is None:
                trailer = message.digest
            elif part == "chunk" and header is not None and not header.fd_handle:
                received += len(message.chunk)
                if received > header.size:
                    raise LoaderCallError("the loader sent more model bytes than announced")
                chunks.append(message.chunk)
            else:
                raise LoaderCallError(f"the loader sent an unexpected {part or 'empty'} message")
    except grpc.aio.AioRpcError as exc:
        await _drop(early, waiting)
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            _forget(endpoint, channel)
        where = f" at {endpoint}" if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else ""
        ticket = next((str(value) for key, value in (exc.trailing_metadata() or ()) if key == SANDBOX_TICKET_METADATA), "")
        raise LoaderCallError(f"{code.name}{where}: {exc.details()}", code=code, sandbox_ticket=ticket) from None
    except BaseException:
        call.cancel()  # the channel may outlive this call: the stream must not
        await _drop(early, waiting)
        raise
    finally:
        if not reuse_channel:
            await channel.close()
    if waiting is not None:  # the loader did not use the claim (an older one, or streamed)
        await _drop(waiting)
    if header is None:
        raise LoaderCallError("the loader closed the stream without a model")
    if early is not None:
        # The digest ends the stream, or (a small model) came in the header.
        announced = trailer if trailer is not None or not (header.model_blake3 or header.model_sha256) else header
        return await _accept_early(early, announced, header.size)
    # A small model is hashed and read in less time than a handoff to a worker thread takes; a
    # large one off the caller's event loop (hashlib frees the GIL).
    small = header.size < _HASH_CHUNK
    if header.fd_handle:
        if side_channel is None:
            raise LoaderCallError("the loader offered a descriptor on an endpoint that cannot pass one")
        fetched = await _claim(side_channel, header, deadline)
    else:
        fetched = _joined(header, chunks) if small else await asyncio.to_thread(_joined, header, chunks)
    if consume is not None:
        fetched.consumed = _consume(fetched, consume) if small else await asyncio.to_thread(_consume, fetched, consume)
    return fetched


async def _accept_early(
    early: asyncio.Task[_Early], trailer: loader_pb2.ModelDigest | loader_pb2.LoadedModel | None, size: int
) -> FetchedModel:
    done = await early
    if trailer is None:
        raise LoaderCallError("the loader closed the stream without the model's digest")
    expected = _expected(trailer)
    actual = done.digest if expected[0] == "blake3" else await asyncio.to_thread(_hash_fd, done.fetched.fileno, size, expected[0])
    _check_digest(actual, expected)  # a mismatch outranks whatever `consume` made of the bytes
    if done.error is not None:
        raise done.error
    done.fetched.consumed, done.fetched.digest = done.consumed, expected
    return done.fetched


async def _drop(*claims: asyncio.Task[Any] | None) -> None:
    """Stop claims in progress and let their descriptors go (one reading on a thread is waited
    for: a thread cannot be cancelled, see `_in_thread`)."""
    for claim in claims:
        if claim is None:
            continue
        claim.cancel()  # takes effect only while it waits on the side channel
        try:
            await claim
        except BaseException:  # noqa: BLE001 - the call already failed for another reason
            pass


# --- models served in the sandbox ----------------------------------------------------------------

# Predict carries arrays inline both ways: its channel takes messages up to this size.
MAX_PREDICT_MESSAGE_BYTES = (64 << 20) + (1 << 20)
_PREDICT_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_PREDICT_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_PREDICT_MESSAGE_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
]
_predict_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, grpc.aio.Channel]] = (
    weakref.WeakKeyDictionary()
)


def _served_channel(endpoint: str) -> grpc.aio.Channel:
    kept = _predict_channels.setdefault(asyncio.get_running_loop(), {})
    channel = kept.get(endpoint)
    if channel is None or channel.get_state() in _GONE:
        channel = kept[endpoint] = grpc.aio.insecure_channel(endpoint, options=_PREDICT_OPTIONS)
    return channel


async def _unary(endpoint: str, method: str, request: Any, timeout: float) -> Any:
    channel = _served_channel(endpoint)
    try:
        return await getattr(loader_pb2_grpc.LoaderStub(channel), method)(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            kept = _predict_channels.get(asyncio.get_running_loop(), {})
            if kept.get(endpoint) is channel:
                del kept[endpoint]
        where = f" at {endpoint}" if code in (grpc.StatusCode.UNAVAILABLE,) else ""
        raise LoaderCallError(f"{code.name}{where}: {exc.details()}", code=code) from None


async def serve(endpoint: str, request: loader_pb2.ServeRequest, timeout: float) -> loader_pb2.ServedModel:
    """Call Serve: the model is verified (or taken by its ticket) and served in a confined worker."""
    served: loader_pb2.ServedModel = await _unary(endpoint, "Serve", request, timeout)
    if len(served.handle) != 48:
        raise LoaderCallError("the loader answered Serve without a valid handle")
    return served


async def predict(endpoint: str, request: loader_pb2.PredictRequest, timeout: float) -> loader_pb2.PredictResponse:
    """Call Predict on a served model; the answer's array is untrusted data for the caller to check."""
    response: loader_pb2.PredictResponse = await _unary(endpoint, "Predict", request, timeout)
    return response


async def unload(endpoint: str, handle: str, timeout: float) -> bool:
    """End a served model's worker; False if the loader did not know the handle."""
    response: loader_pb2.UnloadResponse = await _unary(endpoint, "Unload", loader_pb2.UnloadRequest(handle=handle), timeout)
    return response.ended



# --- the direct channel to a served model's worker ----------------------------------------------


class ChannelBroken(LoaderCallError):
    """The direct channel closed or failed: its worker has gone (Predict says why)."""


class ChannelTimeout(LoaderCallError):
    """The worker did not answer within the deadline; the channel is closed."""


class ChannelRefused(LoaderCallError):
    """The worker sent something outside the frame's limits; the channel is closed."""


async def claim_channel(endpoint: str, handle: str, timeout: float) -> WorkerChannel:
    """Claim the direct channel a Serve offered under `handle` (ServedModel.channel_handle)."""
    path = fd_socket_for(endpoint)
    if path is None:
        raise LoaderCallError(f"a direct channel needs a unix: endpoint, not {endpoint!r}")
    fd = await receive_fd(path, handle, timeout)
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.close(fd)
        raise LoaderCallError("the loader passed something other than a socket as the direct channel")
    return WorkerChannel(socket.socket(fileno=fd))


class WorkerChannel:
    """A direct channel to one served model's worker (a Unix stream socket it serves on), in the
    worker's frame (`loader.contract.FRAME`). Requests are pipelined: each is written whole as it
    comes and its answer is the next one read (the worker answers in order), so a busy worker
    finds the next request waiting. The socket stays registered with the event loop that uses
    it, which reads whatever has arrived in one call and hands out whole answers. The worker
    ends when this closes. What comes back is untrusted: the header is capped and parsed as JSON
    only, the body is refused unread past its request's `max_body` bytes, and the caller checks
    both."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._answers = _Answers()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one reading the socket
        self._writing: asyncio.Task[None] | None = None  # the last request still being written

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        if self._sock is None:
            return
        self._stop_reading()
        sock, self._sock = self._sock, None
        writing, self._writing = self._writing, None
        if writing is not None and not writing.done() and not writing.get_loop().is_closed():
            writing.cancel()
        self._answers.fail(ChannelBroken("the direct channel to the worker is closed"))
        sock.close()

    async def exchange(
        self, header: dict[str, Any], buffers: list[memoryview], max_body: int, timeout: float
    ) -> tuple[dict[str, Any], bytearray]:
        """Send one request and read its answer within `timeout` (counted from the call, queueing
        behind earlier requests included). A timeout, or a broken or refused answer, closes the
        channel (the requests behind it fail with ChannelBroken); a cancelled caller does not: its
        request is still written whole, its answer read and dropped, and the channel stays in step."""
        loop = asyncio.get_running_loop()
        sock = self._reading(loop)
        size = sum(b.nbytes for b in buffers)
        head = frame_head(header, size)
        data: list[bytes | memoryview] = [b"".join([head, *buffers])] if size <= _JOIN_BYTES else [head, *buffers]
        try:
            async with asyncio.timeout(timeout):
                # No await between these two: answers are expected in the order requests are written.
                answer = self._answers.expect(max_body)
                writing = self._write(loop, sock, data)
                if writing is not None:
                    await asyncio.shield(writing)  # cancelled, the request is still written whole
                raw, body = await answer  # cancelled, the answer is dropped when it comes
        except TimeoutError:
            self.close()
            raise ChannelTimeout(f"the model did not answer within {timeout:g} s", grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except OSError as exc:
            self.close()
            raise ChannelBroken(f"the direct channel to the worker failed: {exc}") from None
        except LoaderCallError:
            self.close()
            raise
        decoded = load_header(raw)
        if decoded is None:
            self.close()
            raise ChannelRefused("the worker sent a malformed header")
        return decoded, body

    def _write(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, data: list[bytes | memoryview]) -> asyncio.Task[None] | None:
        """Write one request after those before it: what the socket takes now at once, the rest
        in a task of its own (None when nothing is left), which no caller's cancellation stops.
        A write that fails closes the channel: a request cut off half-written leaves it out of step."""
        previous = self._writing
        if previous is None or previous.done():
            data = _send_now(sock, data)
            if not data:
                self._writing = None
                return None
            previous = None
        task = loop.create_task(self._write_after(previous, loop, sock, data))
        task.add_done_callback(_retrieve)
        self._writing = task
        return task

    async def _write_after(
        self, previous: asyncio.Task[None] | None, loop: asyncio.AbstractEventLoop, sock: socket.socket, data: list[bytes | memoryview]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            if self._sock is not sock:
                raise ChannelBroken("the direct channel to the worker is closed")
            for chunk in data:
                await loop.sock_sendall(sock, chunk)
        except BaseException:
            self.close()
            raise

    def _reading(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """The socket, registered for reading with `loop` (moved there from a loop that has
        stopped: scripts may run one event loop per call)."""
        sock = self._sock
        if sock is None:
            # Closed on a refused answer that no request waited for: the refusal is the cause.
            raise self._answers.refusal or ChannelBroken("the direct channel to the worker is closed")
        if self._loop is not loop:
            if self._loop is not None and self._loop.is_running():
                raise ChannelBroken("the direct channel is in use by another event loop")
            if self._answers.expecting or (self._writing is not None and not self._writing.done()):
                self.close()
                raise ChannelBroken("the direct channel was left with answers unread by an event loop that stopped")
            self._writing = None
            self._stop_reading()
            loop.add_reader(sock.fileno(), self._readable)
            self._loop = loop
        return sock

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            if not self._answers.read(sock):
                self.close()
        except BlockingIOError:
            pass
        except OSError as exc:
            self._answers.fail(ChannelBroken(f"the direct channel to the worker failed: {exc}"))
            self.close()

    def _stop_reading(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed() and self._sock is not None:
            loop.remove_reader(self._sock.fileno())


# Requests up to this size go in one write (header and arrays joined); larger ones are not copied.
_JOIN_BYTES = 64 << 10
# What one read asks for while a frame's head and header are read: at least the largest header,
# which must fit whole once its head is taken (a full buffer would read as the worker's EOF).
_READ_AHEAD = MAX_FRAME_HEADER


def _send_now(sock: socket.socket, data: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """Send what the socket takes without waiting (a small request goes whole, without a trip
    through the event loop); what is left, if anything."""
    for i, chunk in enumerate(data):
        view = memoryview(chunk).cast("B")
        try:
            sent = sock.send(view)
        except BlockingIOError:
            sent = 0
        if sent < view.nbytes:
            return [view[sent:], *data[i + 1 :]]
    return []


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # a write whose caller was cancelled leaves no "never retrieved" warning


class _Answers:
    """The worker's answers as they are read, each into its own buffers, in order: each `expect`
    is the next answer. A frame past its limits, or a closed socket, fails every answer still
    expected (and every later one)."""

    def __init__(self) -> None:
        self._expected: collections.deque[tuple[asyncio.Future[tuple[bytearray, bytearray]], int]] = collections.deque()
        self._pending = bytearray(_READ_AHEAD)  # a head and header being read
        self._filled = 0
        self._head: tuple[int, int] | None = None
        self._header = bytearray()
        self._body: bytearray | None = None
        self._body_filled = 0
        self._failure: LoaderCallError | None = None

    @property
    def expecting(self) -> bool:
        return bool(self._expected)

    @property
    def refusal(self) -> ChannelRefused | None:
        """Why the answers stopped, when the worker sent something outside the frame's limits."""
        return self._failure if isinstance(self._failure, ChannelRefused) else None

    def expect(self, max_body: int) -> asyncio.Future[tuple[bytearray, bytearray]]:
        future: asyncio.Future[tuple[bytearray, bytearray]] = asyncio.get_running_loop().create_future()
        if self._failure is not None:
            future.set_exception(self._failure)
        else:
            self._expected.append((future, max_body))
        return future

    def read(self, sock: socket.socket) -> bool:
        """One read of what has arrived; False when the worker has closed the channel."""
        if self._body is not None:
            n = sock.recv_into(memoryview(self._body)[self._body_filled :])
            self._body_filled += n
        else:
            n = sock.recv_into(memoryview(self._pending)[self._filled :])
            self._filled += n
        if n == 0:
            self.fail(ChannelBroken("the worker closed the direct channel"))
            return False
        self._finish_body()
        self._parse()
        return self._failure is None

    def fail(self, error: LoaderCallError) -> None:
        if self._failure is None:
            self._failure = error
        while self._expected:
            future, _ = self._expected.popleft()
            if not future.done():
                future.set_exception(self._failure)
                future.exception()  # retrieved: a caller that gave up leaves no warning behind

    def _parse(self) -> None:
        """Takes whole answers out of what was read into `_pending`, and starts a body's buffer."""
        while self._body is None and self._failure is None:
            data = memoryview(self._pending)[: self._filled]
            if self._head is None:
                if len(data) < FRAME.size:
                    return
                header_len, body_len = FRAME.unpack(data[: FRAME.size])
                refusal = self._refusal(header_len, body_len)
                if refusal:
                    self.fail(ChannelRefused(refusal))
                    return
                self._head = (header_len, body_len)
                self._consume(FRAME.size)
                continue
            header_len, body_len = self._head
            if len(data) < header_len:
                return
            self._header = bytearray(data[:header_len])
            body = bytearray(body_len)
            taken = min(body_len, self._filled - header_len)
            body[:taken] = data[header_len : header_len + taken]
            self._consume(header_len + taken)
            self._body, self._body_filled = body, taken
            self._finish_body()

    def _refusal(self, header_len: int, body_len: int) -> str:
        if not self._expected:
            return "the worker sent an answer to no request"
        if header_len > MAX_FRAME_HEADER:
            return f"the worker sent a header of {header_len} bytes, over {MAX_FRAME_HEADER}"
        if body_len > self._expected[0][1]:
            return f"the model's answer is {body_len} bytes, over the limit of {self._expected[0][1]}"
        return ""

    def _finish_body(self) -> None:
        if self._body is None or self._body_filled < len(self._body):
            return
        future, _ = self._expected.popleft()
        if not future.done():  # a caller that was cancelled leaves its answer to be dropped
            future.set_result((self._header, self._body))
        self._head, self._body, self._header = None, None, bytearray()

    def _consume(self, n: int) -> None:
        rest = self._filled - n
        self._pending[:rest] = self._pending[n : self._filled]
        self._filled = rest
