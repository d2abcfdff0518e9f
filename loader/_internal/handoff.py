"""Pass converted models to clients as sealed memfds, over a Unix socket next to the gRPC one.

gRPC cannot carry descriptors, so VerifyAndLoad answers with a one-time handle and the client
claims the descriptor on `<socket>.fd` (SCM_RIGHTS; works across containers sharing the socket
volume). Handles are 192-bit random, single use and expire; the socket has the gRPC socket's
permissions (the loader's group only).

A client may also choose the handle itself (the request's `fd_claim`) and wait for the model
on this socket while the call runs (`wait <handle>`): the descriptor is then passed the moment
the model is sealed, while the header is still on its way through gRPC.

One thread serves every connection through a selector: a client that sends its line slowly
holds one connection slot, never the others, and is cut off when its whole request has taken
longer than `request_seconds`. When all slots are taken the oldest connection still sending
gives way to a new one. A descriptor goes only to a client that is still there: if passing it
fails, the offer stays for a claim. If the kernel refuses to pass one at all (gVisor does, to a
client outside its sandbox), the client is told so and the loader streams models from then on.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import select
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loader._internal.memfd import SealedFile
from loader.contract import DESCRIPTORS_REFUSED, FD_SOCKET_SUFFIX, WAIT_PREFIX

_MAX_HANDLE_LINE = 128
_HANDLE = re.compile(r"[0-9a-f]{48}")
# Connections waiting for a model not yet offered; more are refused (each is one open socket).
_MAX_WAITING = 256
# Failed claims remembered for a wait that arrives after its call failed (a few bytes each).
_MAX_WITHDRAWN = 4096
# How often waits are checked for a client that left or a time that ran out.
_TIDY_SECONDS = 1.0
# Connections still sending their line; a new one beyond this ends the oldest of them.
MAX_PENDING = 64
# A client sends its line at once; the whole line must have come within this.
REQUEST_SECONDS = 5.0
_ACCEPTS_PER_ROUND = 64
_OK = b"ok\n"
_UNKNOWN = b"unknown, used or expired handle; call VerifyAndLoad again\n"
_TOO_SLOW = b"the request line took too long; send it at once\n"
# The loader's own health probe: answered `ok`, touches no offer.
PROBE = "probe"


def well_formed(handle: str) -> bool:
    """True for a handle a client may choose: 48 lower-case hex digits (192 bits)."""
    return _HANDLE.fullmatch(handle) is not None


@dataclass
class _Pending:
    line: bytes
    deadline: float


class Handoff:
    """Offers sealed files under one-time handles and serves them on a Unix socket."""

    def __init__(
        self,
        path: Path,
        ttl_seconds: float = 60.0,
        request_seconds: float = REQUEST_SECONDS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.path = path
        self.ttl_seconds = ttl_seconds
        self.request_seconds = request_seconds
        self.max_pending = max_pending
        self._offers: dict[str, tuple[SealedFile, float]] = {}
        self._waiting: dict[str, tuple[socket.socket, float]] = {}
        # Claims whose call already failed, with the reason: a `wait` that arrives after the
        # failure (the call can fail before the client's wait is read) is answered at once.
        self._withdrawn: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        # False once the kernel refused to pass a descriptor here: models are streamed from then on.
        self.passes_descriptors = True

    @staticmethod
    def path_for(grpc_socket: Path) -> Path:
        return grpc_socket.with_name(grpc_socket.name + FD_SOCKET_SUFFIX)

    def offer(self, sealed: SealedFile, claim: str = "") -> str:
        """Register `sealed` for one claim within the time to live; return its handle.

        With a well-formed `claim` not in use, that is the handle, and a client already waiting
        for it gets the descriptor now; "" if the kernel refused to pass it to that client (the
        call then streams the model)."""
        now = time.monotonic()
        with self._lock:
            expired = self._sweep(now)
            waiter = None
            if claim and well_formed(claim) and claim not in self._offers:
                handle = claim
                waiter = self._waiting.pop(claim, (None, 0.0))[0]
            else:
                handle = secrets.token_hex(24)
            if waiter is None:
                self._offers[handle] = (sealed, now + self.ttl_seconds)
        _close_all(expired, b"expired before the model was ready; call VerifyAndLoad again\n")
        if waiter is not None:
            try:
                if not self._deliver(waiter, handle, sealed, now + self.ttl_seconds):
                    return ""
            finally:
                waiter.close()
        return handle

    def withdraw(self, claim: str, reason: str) -> None:
        """The call for `claim` failed: end a connection waiting for it, with `reason`."""
        with self._lock:
            waiter = self._waiting.pop(claim, (None, 0.0))[0]
            if waiter is None and well_formed(claim):
                if len(self._withdrawn) >= _MAX_WITHDRAWN:
                    self._withdrawn.pop(next(iter(self._withdrawn)))
                self._withdrawn[claim] = (reason, time.monotonic() + self.ttl_seconds)
        if waiter is not None:
            _close_all([waiter], _no_model(reason))

    def probe(self, timeout: float) -> bool:
        """True if the side channel accepts a connection and answers it within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(str(self.path))
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                _send(conn, PROBE.encode() + b"\n", 0)
                answer = b""
                while not answer.endswith(b"\n") and len(answer) < 16:
                    conn.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = conn.recv(16)
                    if not chunk:
                        break
                    answer += chunk
                return answer == _OK
        except OSError:
            return False

    def _sweep(self, now: float) -> list[socket.socket]:
        for key in [k for k, (_, deadline) in self._offers.items() if deadline < now]:
            del self._offers[key]
        for key in [k for k, (_, deadline) in self._withdrawn.items() if deadline < now]:
            del self._withdrawn[key]
        gone = [k for k, (_, deadline) in self._waiting.items() if deadline < now]
        return [self._waiting.pop(k)[0] for k in gone]

    def _gone(self) -> list[socket.socket]:
        """Take out the waiting connections whose client has closed (or sent more)."""
        conns = {conn.fileno(): key for key, (conn, _) in self._waiting.items()}
        poller = select.poll()
        for fd in conns:
            poller.register(fd, select.POLLIN)
        return [self._waiting.pop(conns[fd])[0] for fd, _ in poller.poll(0)]

    def _tidy(self, now: float) -> None:
        """End waits whose client has gone or whose time is up, without waiting for the next
        offer: otherwise their sockets stay open while no load comes."""
        with self._lock:
            if not self._waiting and not self._withdrawn:
                return
            expired = self._sweep(now)
            gone = self._gone()
        _close_all(expired, b"expired before the model was ready; call VerifyAndLoad again\n")
        _close_all(gone, b"")

    def _deliver(self, conn: socket.socket, handle: str, sealed: SealedFile, expires: float) -> bool:
        """Pass `sealed` to `conn`; if its client is gone, keep the offer for a claim. False if
        the kernel refuses to pass descriptors to this client (the client is told so)."""
        try:
            socket.send_fds(conn, [_OK], [sealed.fd], socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # gVisor, to a socket outside its sandbox
                if self.passes_descriptors:
                    self.passes_descriptors = False
                    print(f"loader: the kernel does not pass descriptors on {self.path}; models are streamed", file=sys.stderr, flush=True)
                try:
                    _send(conn, DESCRIPTORS_REFUSED.encode() + b"\n")
                except OSError:
                    pass
                return False
            with self._lock:
                self._offers.setdefault(handle, (sealed, expires))
        return True

    def start(self) -> None:
        """Bind the side-channel socket (a stale one is replaced) and serve it on a thread."""
        if self.path.is_socket():
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o007)  # like the gRPC socket: the loader's group (MLServer) only
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._wake = socket.socketpair()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, args=(listener, self._wake[0]), daemon=True, name="fd-handoff")
        self._thread.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            self._stopping = True
            wake, self._wake = self._wake, None
            if wake is not None:
                _send(wake[1], b"x")
            if self._thread is not None:
                self._thread.join(10)
            if wake is not None:
                wake[0].close()
                wake[1].close()
            self.path.unlink(missing_ok=True)
        with self._lock:
            waiting = [conn for conn, _ in self._waiting.values()]
            self._waiting.clear()
        _close_all(waiting, b"the loader is stopping\n")

    def _serve(self, listener: socket.socket, wake: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        # Connections still sending their line, oldest first.
        pending: dict[socket.socket, _Pending] = {}
        try:
            while not self._stopping:
                timeout = None
                if pending:
                    timeout = max(min(p.deadline for p in pending.values()) - time.monotonic(), 0.0)
                if self._waiting or self._withdrawn:
                    timeout = min(timeout if timeout is not None else _TIDY_SECONDS, _TIDY_SECONDS)
                for key, _ in selector.select(timeout):
                    if key.fileobj is listener:
                        self._accept(listener, selector, pending)
                    elif key.fileobj is not wake and key.fileobj in pending:
                        self._read(key.fileobj, selector, pending)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn in [c for c, p in pending.items() if p.deadline <= now]:
                    self._end(conn, selector, pending, _TOO_SLOW)
                self._tidy(now)
        finally:
            for conn in list(pending):
                self._end(conn, selector, pending, b"the loader is stopping\n")
            selector.close()
            listener.close()

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector, pending: dict[socket.socket, _Pending]) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError:  # out of descriptors: make room, try again next round
                if pending:
                    self._end(next(iter(pending)), selector, pending, b"too many connections\n")
                return
            conn.setblocking(False)
            if len(pending) >= self.max_pending:
                # Idle connections must not starve new ones: the one that has had longest goes.
                self._end(next(iter(pending)), selector, pending, b"too many connections; send the line at once\n")
            pending[conn] = _Pending(b"", time.monotonic() + self.request_seconds)
            selector.register(conn, selectors.EVENT_READ)
            self._read(conn, selector, pending)  # a client sends its line with the connection

    def _read(self, conn: socket.socket, selector: selectors.BaseSelector, pending: dict[socket.socket, _Pending]) -> None:
        request = pending[conn]
        try:
            chunk = conn.recv(_MAX_HANDLE_LINE - len(request.line))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._end(conn, selector, pending, b"")
            return
        request.line += chunk
        if not request.line.endswith(b"\n") and len(request.line) < _MAX_HANDLE_LINE:
            return
        selector.unregister(conn)
        del pending[conn]
        kept = False
        try:
            kept = self._answer(conn, request.line.strip().decode(errors="replace"))
        except OSError:
            pass  # the client went away
        finally:
            if not kept:
                conn.close()

    @staticmethod
    def _end(conn: socket.socket, selector: selectors.BaseSelector, pending: dict[socket.socket, _Pending], message: bytes) -> None:
        selector.unregister(conn)
        del pending[conn]
        _close_all([conn], message)

    def _answer(self, conn: socket.socket, text: str) -> bool:
        """Answer one request line; True if the connection was kept to wait for its model."""
        if text == PROBE:
            _send(conn, _OK)
            return False
        if text.startswith(WAIT_PREFIX):
            return self._wait(conn, text[len(WAIT_PREFIX) :])
        with self._lock:
            found = self._offers.pop(text, None)
        if found is None or found[1] < time.monotonic():
            _send(conn, _UNKNOWN)
            return False
        self._deliver(conn, text, *found)
        return False

    def _wait(self, conn: socket.socket, handle: str) -> bool:
        now = time.monotonic()
        with self._lock:
            expired = self._sweep(now)
            if len(self._waiting) >= _MAX_WAITING:
                expired += self._gone()
            found = self._offers.pop(handle, None)
            failed = self._withdrawn.pop(handle, None)
            refused = failed is None and found is None and (
                not well_formed(handle) or handle in self._waiting or len(self._waiting) >= _MAX_WAITING
            )
            if found is None and failed is None and not refused:
                self._waiting[handle] = (conn, now + self.ttl_seconds)
        _close_all(expired, b"expired before the model was ready; call VerifyAndLoad again\n")
        if failed is not None:
            _send(conn, _no_model(failed[0]))
            return False
        if found is not None:
            self._deliver(conn, handle, *found)
            return False
        if refused:
            _send(conn, b"cannot wait for this handle; claim the header's handle instead\n")
            return False
        return True


def _no_model(reason: str) -> bytes:
    return f"no model: {reason}\n".encode(errors="replace")[:512]


def _send(conn: socket.socket, data: bytes, flags: int = socket.MSG_DONTWAIT) -> None:
    """Send a short message with sendmsg: the loader container's seccomp profile allows
    sendmsg, not sendto (which `send` uses)."""
    conn.sendmsg([data], [], flags | socket.MSG_NOSIGNAL)


def _close_all(conns: list[socket.socket], message: bytes) -> None:
    for conn in conns:
        try:
            if message:
                _send(conn, message)
        except OSError:
            pass
        finally:
            conn.close()
