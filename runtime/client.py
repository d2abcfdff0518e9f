"""The runtime's side of VerifyAndLoad: the policy as a request, and refusals as HTTP errors."""

from __future__ import annotations

from loader.client import Consumer, FetchedModel, LoaderCallError
from loader.client import predict as _predict
from loader.client import serve as _serve
from loader.client import verify_and_load as _call
from loader.proto.v1 import loader_pb2
from runtime.errors import HTTP_STATUS_FOR, PREDICT_STATUS_FOR, ModelRefused, PredictFailed
from runtime.settings import SigstorePolicy

__all__ = ["Consumer", "FetchedModel", "build_request", "predict", "serve", "verify_and_load"]


def build_request(
    policy: SigstorePolicy, artefact: str, model_name: str
) -> loader_pb2.VerifyAndLoadRequest:
    return loader_pb2.VerifyAndLoadRequest(
        artefact=artefact,
        bundle=policy.bundle or "",
        # SignerPolicy's fields are loader.v1.Signer's, one for one.
        signers=[loader_pb2.Signer(**signer.model_dump()) for signer in policy.signers],
        trust_root=policy.trust_root,
        model_name=model_name,
        trusted_types=policy.trusted_types,
        ignore_paths=policy.ignore_paths,
        # The allowlist decides here (runtime/safe_load.py); skops' own verdict is not needed.
        omit_untrusted_types=True,
        # "auto": the loader keeps the verified bytes, should the allowlist or a validator refuse them.
        execution=loader_pb2.EXECUTION_AUTO if policy.execution == "auto" else loader_pb2.EXECUTION_SERVER,
    )


async def verify_and_load(
    endpoint: str,
    request: loader_pb2.VerifyAndLoadRequest,
    timeout: float,
    max_bytes: int,
    consume: Consumer | None = None,
    reuse_channel: bool = True,
) -> FetchedModel:
    """Call VerifyAndLoad (see `loader.client.verify_and_load` for `consume`); a failure becomes
    ModelRefused with the matching HTTP status."""
    try:
        return await _call(endpoint, request, timeout, max_bytes, consume, reuse_channel)
    except LoaderCallError as exc:
        if exc.code is not None:
            raise ModelRefused(
                f"loader refused {request.model_name!r} ({exc})", status_code=HTTP_STATUS_FOR.get(exc.code, 500),
                sandbox_ticket=exc.sandbox_ticket,
            ) from None
        raise ModelRefused(str(exc), status_code=413 if exc.too_large else 502) from None


async def serve(endpoint: str, request: loader_pb2.ServeRequest, timeout: float) -> loader_pb2.ServedModel:
    """Call Serve; a refusal becomes ModelRefused with the matching HTTP status."""
    try:
        return await _serve(endpoint, request, timeout)
    except LoaderCallError as exc:
        status = HTTP_STATUS_FOR.get(exc.code, 500) if exc.code is not None else 502
        raise ModelRefused(f"loader refused to serve {request.load.model_name!r} in the sandbox ({exc})", status) from None


async def predict(endpoint: str, request: loader_pb2.PredictRequest, timeout: float) -> loader_pb2.PredictResponse:
    """Call Predict; a failure becomes PredictFailed with its cause (5xx unless the input was bad)."""
    try:
        return await _predict(endpoint, request, timeout)
    except LoaderCallError as exc:
        status = PREDICT_STATUS_FOR.get(exc.code, 502) if exc.code is not None else 502
        raise PredictFailed(f"the model served in the sandbox failed: {exc}", status) from None
