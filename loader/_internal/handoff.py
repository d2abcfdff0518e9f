"""Pass converted models to clients as sealed memfds, over a Unix socket next to the gRPC one.

gRPC cannot carry descriptors, so VerifyAndLoad answers with a one-time handle and the client
claims the descriptor on `<socket>.fd` (SCM_RIGHTS; works across containers sharing the socket
volume). Handles are 192-bit random, single use and expire; the socket has the gRPC socket's
permissions (the loader's group only).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

from loader._internal.memfd import SealedFile
from loader.client import FD_SOCKET_SUFFIX

_MAX_HANDLE_LINE = 128


class Handoff:
    """Offers sealed files under one-time handles and serves them on a Unix socket."""

    def __init__(self, path: Path, ttl_seconds: float = 60.0) -> None:
        self.path = path
        self.ttl_seconds = ttl_seconds
        self._offers: dict[str, tuple[SealedFile, float]] = {}
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @staticmethod
    def path_for(grpc_socket: Path) -> Path:
        return grpc_socket.with_name(grpc_socket.name + FD_SOCKET_SUFFIX)

    def offer(self, sealed: SealedFile) -> str:
        """Register `sealed` for one claim within the time to live; return its handle."""
        handle = secrets.token_hex(24)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (_, deadline) in self._offers.items() if deadline < now]:
                del self._offers[key]
            self._offers[handle] = (sealed, now + self.ttl_seconds)
        return handle

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

    def _serve(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    self._answer(conn)
                except OSError:
                    pass  # the client went away; the handle stays claimed and unused

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        line = b""
        while not line.endswith(b"\n") and len(line) < _MAX_HANDLE_LINE:
            chunk = conn.recv(_MAX_HANDLE_LINE - len(line))
            if not chunk:
                return
            line += chunk
        sealed = self._claim(line.strip().decode(errors="replace"))
        if sealed is None:
            conn.sendall(b"unknown, used or expired handle; call VerifyAndLoad again\n")
            return
        socket.send_fds(conn, [b"ok\n"], [sealed.fd])
