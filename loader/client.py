"""The one client of the VerifyAndLoad contract, used by the MLServer runtime and the CLI.

It knows only the gRPC contract (`loader.proto.v1`): it sends a request, reads the header and
the model bytes, and checks that they match the header. The bytes stay untrusted data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import grpc

from loader.proto.v1 import loader_pb2, loader_pb2_grpc


class LoaderCallError(Exception):
    """The call failed: a refusal from the loader (with its gRPC code) or a broken reply."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large


@dataclass(frozen=True)
class FetchedModel:
    """Model bytes from the loader (untrusted until validated) and the header describing them."""

    data: bytes
    header: loader_pb2.LoadedModel


async def verify_and_load(
    endpoint: str, request: loader_pb2.VerifyAndLoadRequest, timeout: float, max_bytes: int
) -> FetchedModel:
    """Call VerifyAndLoad at `endpoint`; return the model bytes once size and digest match."""
    options = [
        ("grpc.max_receive_message_length", 4 << 20),
        # A fresh connection per load: a loader restarted a moment ago is reached at once,
        # not after the reconnect backoff of a failure remembered in gRPC's global pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
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
                if header is None or received > header.size:
                    raise LoaderCallError("the loader sent more model bytes than announced")
                chunks.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            where = f" at {endpoint}" if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else ""
            raise LoaderCallError(f"{code.name}{where}: {exc.details()}", code=code) from None
    if header is None:
        raise LoaderCallError("the loader closed the stream without a model")
    data = b"".join(chunks)
    if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.model_sha256:
        raise LoaderCallError("the model bytes received do not match the loader's header")
    return FetchedModel(data, header)
