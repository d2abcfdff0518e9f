"""gRPC front of the loader: VerifyAndLoad, health checking and reflection on a Unix socket."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loader._internal.confine import confinement_summary
from loader._internal.handoff import Handoff
from loader._internal.inference import answer_array, predict_request
from loader._internal.memfd import SealedFile
from loader._internal.service import TICKET_SECONDS, LoaderService, LoadRequest, LoadResult
from loader.contract import SANDBOX_TICKET_METADATA
from loader.errors import BadRequest, LoaderError, UnpicklingFailed
from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from loader.signers import Signer

CHUNK_BYTES = 1 << 20  # under gRPC's default 4 MB receive limit, so any client can stream
# A smaller model is hashed at once (well under a millisecond): sending its digest last would
# only add a round of thread handoffs on both sides.
DIGEST_LAST_FROM_BYTES = 8 << 20
MAX_SOCKET_PATH = 107
# How often the side channel is probed; health says NOT_SERVING while it does not answer.
PROBE_SECONDS = 5.0
# VerifyAndLoad requests are small; the server's message limit is raised for Predict only.
MAX_LOAD_REQUEST_BYTES = 1 << 20


class LoaderServicer(loader_pb2_grpc.LoaderServicer):
    def __init__(self, service: LoaderService, handoff: Handoff | None = None) -> None:
        self._service = service
        self._handoff = handoff

    def VerifyAndLoad(  # noqa: N802 - gRPC method name
        self, request: loader_pb2.VerifyAndLoadRequest, context: grpc.ServicerContext
    ) -> Iterator[loader_pb2.VerifyAndLoadResponse]:
        if request.execution == loader_pb2.EXECUTION_SANDBOX:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "EXECUTION_SANDBOX: call Serve, which never hands the model back")
        if request.ByteSize() > MAX_LOAD_REQUEST_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is over {MAX_LOAD_REQUEST_BYTES} bytes")
        handoff = self._handoff if request.accept_fd and self._handoff is not None and self._handoff.passes_descriptors else None
        claim = request.fd_claim if handoff is not None else ""
        handles: list[str] = []

        def offer(model: SealedFile) -> None:
            # Passed to a client waiting on its claim now, before the loader's own bookkeeping.
            handles.append(handoff.offer(model, claim))  # type: ignore[union-attr]

        try:
            result = self._service.load(_to_load_request(request), offer if handoff is not None else None)
        except BaseException as exc:
            if claim:
                handoff.withdraw(claim, str(exc) if isinstance(exc, LoaderError) else "the load failed")  # type: ignore[union-attr]
            if isinstance(exc, LoaderError):
                if isinstance(exc, UnpicklingFailed) and exc.sandbox_ticket:
                    context.set_trailing_metadata(((SANDBOX_TICKET_METADATA, exc.sandbox_ticket),))
                context.abort(exc.code, str(exc))
            raise
        algorithm = "blake3" if request.accept_blake3 else "sha256"
        if handoff is not None and not handles:  # a cached model: offered now
            offer(result.converted.model)
        if handoff is not None and not handles[0]:
            handoff = None  # the kernel does not pass descriptors to this client (gVisor): streamed
        header = _header(result)
        if handoff is not None:
            # The client claims the sealed memfd on the side channel (or is waiting there for
            # it already, and got it before this header): no chunks follow.
            header.fd_handle = handles[0]
            header.fd_handle_ttl_seconds = handoff.ttl_seconds
            if request.digest_after_handle and result.converted.size >= DIGEST_LAST_FROM_BYTES:
                # The client reads the model while the digest is taken; it accepts it only once
                # the digest that ends the stream matches.
                yield loader_pb2.VerifyAndLoadResponse(header=header)
                yield loader_pb2.VerifyAndLoadResponse(digest=_digest(result, algorithm))
                return
            _set_digest(header, result, algorithm)
            yield loader_pb2.VerifyAndLoadResponse(header=header)
            return
        _set_digest(header, result, algorithm)
        yield loader_pb2.VerifyAndLoadResponse(header=header)
        with result.converted.model.mapped(populate=False) as data:
            for offset in range(0, len(data), CHUNK_BYTES):
                yield loader_pb2.VerifyAndLoadResponse(chunk=bytes(data[offset : offset + CHUNK_BYTES]))

    def Describe(  # noqa: N802 - gRPC method name
        self, request: loader_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> loader_pb2.LoaderDescription:
        service = self._service
        return loader_pb2.LoaderDescription(
            confinement=confinement_summary(service.sandbox.limits),
            trust_roots=service.trust_roots.names,
            default_trust_root=service.trust_roots.default,
            child_pool=service.sandbox.pool_size,
            fd_socket=str(self._handoff.path) if self._handoff is not None and self._handoff.passes_descriptors else "",
            served_models=service.workers.count() if service.workers is not None else 0,
            max_served_models=service.workers.limits.max_workers if service.workers is not None else 0,
            user_code=service.workers.user_code if service.workers is not None else "",
        )

    def Serve(  # noqa: N802 - gRPC method name
        self, request: loader_pb2.ServeRequest, context: grpc.ServicerContext
    ) -> loader_pb2.ServedModel:
        try:
            verified, served = self._service.serve(
                _to_load_request(request.load),
                request.sandbox_ticket,
                request.reason,
                # Not where the kernel passes no descriptor to the caller (gVisor): gRPC Predict.
                channel=request.direct_channel and self._handoff is not None and self._handoff.passes_descriptors,
            )
        except LoaderError as exc:
            context.abort(exc.code, str(exc))
        channel_handle = ""
        if served.channel is not None and self._handoff is not None:
            # Offered like a model's memfd; the loader's copy closes once it is passed or expires,
            # so the worker's lifetime is the claimant's (or the offer's, if nobody claims it).
            channel_handle = self._handoff.offer(SealedFile(served.channel.detach(), 0))
        return loader_pb2.ServedModel(
            handle=served.handle,
            facts=loader_pb2.VerificationFacts(**dataclasses.asdict(verified)),
            methods=served.methods,
            reason=request.reason,
            timings=[loader_pb2.StageTiming(stage=k, seconds=s) for k, s in served.timings.items()],
            memory_bytes=served.limits.memory_bytes,
            deadline_seconds=served.limits.deadline_seconds,
            channel_handle=channel_handle,
            max_output_bytes=served.limits.max_output_bytes,
        )

    def Predict(  # noqa: N802 - gRPC method name
        self, request: loader_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> loader_pb2.PredictResponse:
        workers = self._service.workers
        started = time.perf_counter()
        try:
            if workers is None:
                raise BadRequest("this loader does not serve models")
            header, buffers = predict_request(
                request.method, [(a.name, a.dtype, tuple(a.shape), a.data, a.object) for a in request.inputs], request.frame
            )
            answer, body = workers.predict(request.handle, header, buffers)
            dtype, shape, is_object = answer_array(answer)
        except LoaderError as exc:
            context.abort(exc.code, str(exc))
        output = loader_pb2.Array(dtype=dtype, shape=shape, data=bytes(body), object=is_object)
        return loader_pb2.PredictResponse(output=output, seconds=time.perf_counter() - started)

    def Unload(  # noqa: N802 - gRPC method name
        self, request: loader_pb2.UnloadRequest, context: grpc.ServicerContext
    ) -> loader_pb2.UnloadResponse:
        # A served model's handle ends its worker; a sandbox ticket releases the kept artefact.
        workers = self._service.workers
        ended = workers.unload(request.handle) if workers is not None else False
        return loader_pb2.UnloadResponse(ended=ended or self._service.release_ticket(request.handle))


def _to_load_request(request: loader_pb2.VerifyAndLoadRequest) -> LoadRequest:
    signers = [Signer.from_message(s) for s in request.signers]
    for index, signer in enumerate(signers):
        signer.check(f"signers[{index}]")
    return LoadRequest(
        artefact=request.artefact,
        bundle=request.bundle,
        signers=tuple(signers),
        trust_root=request.trust_root,
        model_name=request.model_name,
        trusted_types=tuple(request.trusted_types),
        ignore_paths=tuple(request.ignore_paths),
        report_types=not request.omit_untrusted_types,
        execution="auto" if request.execution == loader_pb2.EXECUTION_AUTO else "server",
    )


def _header(result: LoadResult) -> loader_pb2.LoadedModel:
    return loader_pb2.LoadedModel(
        # Verified's fields are VerificationFacts', one for one.
        facts=loader_pb2.VerificationFacts(**dataclasses.asdict(result.verified)),
        timings=[loader_pb2.StageTiming(stage=k, seconds=s) for k, s in result.timings.items()],
        untrusted_types=result.converted.untrusted_types or [],
        format="skops",
        size=result.converted.size,
        cached=result.cached,
        sandbox_ticket=result.sandbox_ticket,
        sandbox_ticket_ttl_seconds=TICKET_SECONDS if result.sandbox_ticket else 0.0,
    )


def _digest(result: LoadResult, algorithm: str) -> loader_pb2.ModelDigest:
    value = result.converted.digest(algorithm)
    return loader_pb2.ModelDigest(blake3=value) if algorithm == "blake3" else loader_pb2.ModelDigest(sha256=value)


def _set_digest(header: loader_pb2.LoadedModel, result: LoadResult, algorithm: str) -> None:
    started = time.perf_counter()
    digest = _digest(result, algorithm)
    header.model_blake3, header.model_sha256 = digest.blake3, digest.sha256
    header.timings.append(loader_pb2.StageTiming(stage="result_hash", seconds=time.perf_counter() - started))


def _predict_bytes(service: LoaderService) -> int:
    return service.workers.limits.max_input_bytes + (1 << 20) if service.workers is not None else 0


def _watch_side_channel(
    handoff: Handoff, health_servicer: health.HealthServicer, names: tuple[str, ...], every: float
) -> None:
    """Probe the side channel for good: a loader whose handoffs cannot be served is not healthy
    (its gRPC calls would still answer, and a liveness probe would never restart it)."""
    serving = True
    while True:
        try:
            answered = handoff.probe(timeout=every)
        except Exception:  # noqa: BLE001 - whatever broke the probe, the side channel did not answer
            answered = False
        if answered != serving:
            serving = answered
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in names:
                health_servicer.set(name, status)
            state = "answers again" if serving else f"does not answer within {every:g} s: NOT_SERVING"
            print(f"loader: the side channel {handoff.path} {state}", file=sys.stderr, flush=True)
        time.sleep(every)


def build_server(service: LoaderService, socket_path: Path, probe_seconds: float = PROBE_SECONDS) -> grpc.Server:
    """A gRPC server bound to `socket_path` (a stale socket file is replaced). Its health
    follows the side channel's, probed every `probe_seconds`."""
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise ValueError(f"socket path {socket_path} is longer than {MAX_SOCKET_PATH} bytes")
    if socket_path.is_socket():
        socket_path.unlink()
    workers = service.limits.max_concurrent_loads + 4
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loader-rpc"),
        # Predict carries the request's arrays inline (VerifyAndLoad is held to 1 MiB above).
        options=[("grpc.max_receive_message_length", max(MAX_LOAD_REQUEST_BYTES, _predict_bytes(service)))],
    )
    handoff = None
    fd_socket = Handoff.path_for(socket_path)
    if len(str(fd_socket)) <= MAX_SOCKET_PATH:
        handoff = Handoff(fd_socket)
        handoff.start()
    else:
        print(f"loader: {fd_socket} is too long for a socket; models are streamed", file=sys.stderr)
    loader_pb2_grpc.add_LoaderServicer_to_server(LoaderServicer(service, handoff), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = loader_pb2.DESCRIPTOR.services_by_name["Loader"].full_name
    for name in ("", service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if handoff is not None:
        threading.Thread(
            target=_watch_side_channel, args=(handoff, health_servicer, ("", service_name), probe_seconds),
            daemon=True, name="fd-probe",
        ).start()
    reflection.enable_server_reflection(
        (service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    old_umask = os.umask(0o007)  # the socket is for the loader's group (MLServer) only
    try:
        server.add_insecure_port(f"unix://{socket_path}")
    finally:
        os.umask(old_umask)
    return server
