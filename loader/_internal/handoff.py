"""Pass converted models to clients as sealed memfds, over a Unix socket next to the gRPC one.

gRPC cannot carry descriptors, so VerifyAndLoad answers with a one-time handle and the client
claims the descriptor on `<socket>.fd` (SCM_RIGHTS; works across containers sharing the socket
volume). Handles are 192-bit random, single use and expire; the socket has the gRPC socket's
permissions (the loader's group only).

A client may also choose the handle itself (the request's `fd_claim`) and wait for the model
on this socket while the call runs (`wait <handle>`): the descriptor is then passed the moment
the model is sealed, while the header is still on its way through gRPC.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import socket
import threading
import time
from pathlib import Path

from loader._internal.memfd import SealedFile
from loader.client import FD_SOCKET_SUFFIX, WAIT_PREFIX

_MAX_HANDLE_LINE = 128
_HANDLE = re.compile(r"[0-9a-f]{48}")
# Connections waiting for a model not yet offered; more are refused (each is one open socket).
_MAX_WAITING = 256
_OK = b"ok\n"
_UNKNOWN = b"unknown, used or expired handle; call VerifyAndLoad again\n"


def well_formed(handle: str) -> bool:
    """True for a handle a client may choose: 48 lower-case hex digits (192 bits)."""
    return _HANDLE.fullmatch(handle) is not None


class Handoff:
    """Offers sealed files under one-time handles and serves them on a Unix socket."""

    def __init__(self, path: Path, ttl_seconds: float = 60.0) -> None:
        self.path = path
        self.ttl_seconds = ttl_seconds
        self._offers: dict[str, tuple[SealedFile, float]] = {}
        self._waiting: dict[str, tuple[socket.socket, float]] = {}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @staticmethod
    def path_for(grpc_socket: Path) -> Path:
        return grpc_socket.with_name(grpc_socket.name + FD_SOCKET_SUFFIX)

    def offer(self, sealed: SealedFile, claim: str = "") -> str:
        """Register `sealed` for one claim within the time to live; return its handle.

        With a well-formed `claim` not in use, that is the handle, and a client already waiting
        for it gets the descriptor now."""
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
            _pass(waiter, sealed)
        return handle

    def withdraw(self, claim: str, reason: str) -> None:
        """The call for `claim` failed: end a connection waiting for it, with `reason`."""
        with self._lock:
            waiter = self._waiting.pop(claim, (None, 0.0))[0]
        if waiter is not None:
            _close_all([waiter], f"no model: {reason}\n".encode(errors="replace")[:512])

    def _sweep(self, now: float) -> list[socket.socket]:
        for key in [k for k, (_, deadline) in self._offers.items() if deadline < now]:
            del self._offers[key]
        gone = [k for k, (_, deadline) in self._waiting.items() if deadline < now]
        return [self._waiting.pop(k)[0] for k in gone]

    def _gone(self) -> list[socket.socket]:
        """Take out the waiting connections whose client has closed (or sent more)."""
        conns = {conn.fileno(): key for key, (conn, _) in self._waiting.items()}
        poller = select.poll()
        for fd in conns:
            poller.register(fd, select.POLLIN)
        return [self._waiting.pop(conns[fd])[0] for fd, _ in poller.poll(0)]

    def _claim(self, handle: str) -> SealedFile | None:
        with self._lock:
            found = self._offers.pop(handle, None)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

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
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._serve, daemon=True, name="fd-handoff").start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
            self.path.unlink(missing_ok=True)
        with self._lock:
            waiting = [conn for conn, _ in self._waiting.values()]
            self._waiting.clear()
        _close_all(waiting, b"the loader is stopping\n")

    def _serve(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                kept = self._answer(conn)
            except OSError:
                kept = False  # the client went away; the handle stays claimed and unused
            if not kept:
                conn.close()

    def _answer(self, conn: socket.socket) -> bool:
        """Serve one connection; True if it was kept to wait for its model."""
        conn.settimeout(5)
        line = b""
        while not line.endswith(b"\n") and len(line) < _MAX_HANDLE_LINE:
            chunk = conn.recv(_MAX_HANDLE_LINE - len(line))
            if not chunk:
                return False
            line += chunk
        text = line.strip().decode(errors="replace")
        if text.startswith(WAIT_PREFIX):
            return self._wait(conn, text[len(WAIT_PREFIX) :])
        sealed = self._claim(text)
        if sealed is None:
            conn.sendall(_UNKNOWN)
            return False
        socket.send_fds(conn, [_OK], [sealed.fd])
        return False

    def _wait(self, conn: socket.socket, handle: str) -> bool:
        now = time.monotonic()
        with self._lock:
            expired = self._sweep(now)
            if len(self._waiting) >= _MAX_WAITING:
                expired += self._gone()
            found = self._offers.pop(handle, None)
            refused = found is None and (
                not well_formed(handle) or handle in self._waiting or len(self._waiting) >= _MAX_WAITING
            )
            if found is None and not refused:
                self._waiting[handle] = (conn, now + self.ttl_seconds)
        _close_all(expired, b"expired before the model was ready; call VerifyAndLoad again\n")
        if found is not None:
            socket.send_fds(conn, [_OK], [found[0].fd])
            return False
        if refused:
            conn.sendall(b"cannot wait for this handle; claim the header's handle instead\n")
            return False
        return True


def _pass(conn: socket.socket, sealed: SealedFile) -> None:
    try:
        socket.send_fds(conn, [_OK], [sealed.fd])
    except OSError:
        pass  # the client gave up waiting; it cannot claim this handle any more either
    finally:
        conn.close()


def _close_all(conns: list[socket.socket], message: bytes) -> None:
    for conn in conns:
        try:
            conn.sendall(message)
        except OSError:
            pass
        finally:
            conn.close()
