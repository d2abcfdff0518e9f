"""Client for the loader's VerifyAndLoad call (the gRPC contract is all it shares with loader/)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import grpc

from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from runtime.errors import HTTP_STATUS_FOR, ModelRefused
from runtime.settings import SigstorePolicy


@dataclass(frozen=True)
class FetchedModel:
    """Skops bytes from the loader (untrusted data until validated) and what it verified."""

    data: bytes
    header: loader_pb2.LoadedModel


def build_request(
    policy: SigstorePolicy, artefact: str, model_name: str
) -> loader_pb2.VerifyAndLoadRequest:
    return loader_pb2.VerifyAndLoadRequest(
        artefact=artefact,
        bundle=policy.bundle or "",
        signers=[loader_pb2.Signer(**signer.model_dump()) for signer in policy.signers],
        trust_root=policy.trust_root,
        model_name=model_name,
        trusted_types=policy.trusted_types,
    )


async def verify_and_load(
    endpoint: str,
    request: loader_pb2.VerifyAndLoadRequest,
    timeout: float,
    max_bytes: int,
) -> FetchedModel:
    """Call VerifyAndLoad; return the model bytes after checking size and digest."""
    options = [
        ("grpc.max_receive_message_length", 4 << 20),
        # A fresh connection per load: a loader restarted a moment ago is reached at once,
        # not after the reconnect backoff of a failure remembered in gRPC's global pool.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    async with grpc.aio.insecure_channel(endpoint, options=options) as channel:
        stub = loader_pb2_grpc.LoaderStub(channel)
        try:
            call = stub.VerifyAndLoad(request, timeout=timeout, wait_for_ready=False)
            header: loader_pb2.LoadedModel | None = None
            chunks: list[bytes] = []
            received = 0
            async for message in call:
                if message.WhichOneof("part") == "header":
                    header = message.header
                    if header.size > max_bytes:
                        raise ModelRefused(
                            f"the loader returned a {header.size}-byte model; the limit is {max_bytes}",
                            status_code=413,
                        )
                    continue
                received += len(message.chunk)
                if header is None or received > header.size:
                    raise ModelRefused("the loader sent more model bytes than announced", status_code=502)
                chunks.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            where = f" at {endpoint}" if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else ""
            raise ModelRefused(
                f"loader refused {request.model_name!r} ({code.name}{where}): {exc.details()}",
                status_code=HTTP_STATUS_FOR.get(code, 500),
            ) from None
    if header is None:
        raise ModelRefused("the loader closed the stream without a model", status_code=502)
    data = b"".join(chunks)
    if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.model_sha256:
        raise ModelRefused("the model bytes received do not match the loader's header", status_code=502)
    return FetchedModel(data, header)
