"""The MLServer end of a served model's direct channel (`loader.client.WorkerChannel`) against a
peer this test scripts as the worker: the write and cancellation paths, which a real worker cannot
be made to hold still for (it reads as fast as it can)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest

from loader.client import WorkerChannel
from loader.contract import FRAME, frame_head


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _answer_in_order(peer: socket.socket, sizes: list[int]) -> None:
    """The scripted worker: reads each request whole and answers it with its place and size."""
    try:
        for n in range(1, 1000):
            header_len, body_len = FRAME.unpack(_read_exactly(peer, FRAME.size))
            _read_exactly(peer, header_len)
            _read_exactly(peer, body_len)
            sizes.append(body_len)
            peer.sendall(frame_head({"ok": True, "n": n}, 0))
    except (EOFError, OSError):
        pass


def test_a_caller_cancelled_while_its_large_request_is_written_leaves_the_channel_in_step() -> None:
    """A gRPC client that gives up while its 4.8 MB request is still going into the socket: the
    request is written whole (a half-written one would leave the worker out of step, and closing
    the channel ends the worker for every caller), its answer is dropped, and the next request gets
    its own answer."""
    ours, peer = socket.socketpair()
    sizes: list[int] = []

    async def scenario() -> dict[str, object]:
        channel = WorkerChannel(ours)
        large = memoryview(bytes(4_800_000))
        first = asyncio.create_task(channel.exchange({"method": "predict"}, [large], 1 << 20, 60))
        for _ in range(10_000):  # until the socket is full and the rest waits to be written
            await asyncio.sleep(0)
            if channel._writing is not None and not channel._writing.done():
                break
        assert channel._writing is not None and not channel._writing.done(), "the large request went out at once"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not channel.closed, "cancelling the caller closed the channel (and so ended the worker)"
        worker = threading.Thread(target=_answer_in_order, args=(peer, sizes))
        worker.start()
        try:
            answer, _ = await channel.exchange({"method": "predict"}, [memoryview(b"x" * 24)], 1 << 20, 60)
        finally:
            channel.close()
            await asyncio.to_thread(worker.join, 60)
        return answer

    answer = asyncio.run(scenario())
    assert sizes == [4_800_000, 24], f"the worker read requests of {sizes} bytes"
    assert answer == {"ok": True, "n": 2}, f"the next request got {json.dumps(answer)}, not its own answer"
    peer.close()
