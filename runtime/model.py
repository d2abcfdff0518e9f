"""`runtime.SigstoreModel`: MLServer's scikit-learn runtime, loading only verified models."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, Parameters
from mlserver.utils import get_model_uri
from mlserver_sklearn import SKLearnModel
from mlserver_sklearn.sklearn import WELLKNOWN_MODEL_FILENAMES

from loader.bundles import bundle_candidates, find_bundle
from loader.client import (
    ChannelBroken,
    ChannelTimeout,
    DescriptorsRefused,
    LoaderCallError,
    WorkerChannel,
    claim_channel,
    fd_socket_for,
    unload,
)
from loader.contract import reported_text
from loader.proto.v1 import loader_pb2
from runtime._internal.sandboxed import channel_request, encode_inputs, parse_answer, parse_output, to_proto
from runtime.client import Consumer, FetchedModel, build_request, predict, serve, verify_and_load
from runtime.docker_sandbox import EphemeralLoader
from runtime.errors import ModelRefused, PredictFailed
from runtime.safe_load import load_model
from runtime.settings import RuntimeSettings, SigstorePolicy

logger = logging.getLogger("mlserver.sigstore")
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pth")
# Ticket releases under way (a task nobody holds may be collected before it runs).
_RELEASES: set[asyncio.Task[None]] = set()


def refuse_code_beside(folder: Path, what: str) -> None:
    """MLServer imports from the model-settings folder: no Python may sit in it or with artefacts."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    found = sorted(n for n in names if n.endswith(_CODE_SUFFIXES) or n == "__pycache__")
    if found:
        raise ModelRefused(
            f"refusing to load: the {what} {folder} holds Python code {found}; MLServer puts model folders "
            "on sys.path, so keep code out of them (see README, 'Repository layout')",
            403,
        )


_FAILED = "the model served in the sandbox failed"


class SandboxedEstimator:
    """Stands for a model served in the loader's sandbox: it has exactly the methods the worker
    reported (so `SKLearnModel`'s checks, e.g. for predict_proba, hold), called through `call`.

    Requests go on the worker's direct channel when the loader gave one (no gRPC, no loader
    thread on the way), through Predict otherwise; the answer is checked the same way either way.
    This process enforces the deadline on the direct channel: past it, the worker is ended."""

    def __init__(
        self,
        endpoint: str,
        served: loader_pb2.ServedModel,
        timeout: float,
        max_bytes: int,
        channel: WorkerChannel | None = None,
    ) -> None:
        self.endpoint, self.handle, self.timeout = endpoint, served.handle, timeout
        # The loader's cap binds the direct channel too: there, this process is the one that checks.
        self.max_bytes = min(max_bytes, served.max_output_bytes) if served.max_output_bytes > 0 else max_bytes
        self.deadline = served.deadline_seconds or timeout
        self.memory_bytes = served.memory_bytes
        self.channel = channel
        self.ended = ""  # why this process ended the worker, once it has
        for method in served.methods:
            setattr(self, method, None)  # present for hasattr; calls go through `call`

    async def call(self, method: str, decoded: Any) -> Any:
        arrays, frame, rows = encode_inputs(decoded)
        if self.ended:
            raise PredictFailed(f"{_FAILED}: its worker was ended ({self.ended}): load the model again", 502)
        channel = self.channel
        if channel is not None:
            header, buffers = channel_request(method, arrays, frame)
            try:
                answer, body = await channel.exchange(header, buffers, self.max_bytes, self.deadline)
            except ChannelBroken:
                if self.ended:  # this process ended the worker while the request waited
                    raise PredictFailed(f"{_FAILED}: its worker was ended ({self.ended}): load the model again", 502) from None
                # The worker closed it (it crashed, or was ended): the loader knows why, so the
                # request goes through Predict, which reports the cause.
                self.channel = None
            except ChannelTimeout as exc:
                await self.end("deadline")
                raise PredictFailed(f"{_FAILED}: {exc}; its worker was ended (load the model again)", 504) from None
            except LoaderCallError as exc:
                await self.end("answer outside the frame's limits")
                raise PredictFailed(f"{_FAILED}: {exc}; its worker was ended", 502) from None
            else:
                return await self._answer(answer, body, rows)
        request = loader_pb2.PredictRequest(handle=self.handle, method=method, inputs=to_proto(arrays), frame=frame)
        response = await predict(self.endpoint, request, self.timeout)
        return parse_output(response.output, rows, self.max_bytes)

    async def _answer(self, answer: dict[str, Any], body: bytearray, rows: int) -> Any:
        if answer.get("ok") is True:
            return parse_answer(answer, body, rows, self.max_bytes)
        if answer.get("limit") == "memory":
            await self.end("memory limit")
            raise PredictFailed(
                f"{_FAILED}: the model went past its memory limit of {self.memory_bytes} bytes; its worker was ended", 502
            )
        if "refused" in answer:
            raise PredictFailed(f"{_FAILED}: the model's answer cannot be passed on: {reported_text(answer['refused'])}", 502)
        raise PredictFailed(f"{_FAILED}: the model raised: {reported_text(answer.get('error'))}", 500)

    async def end(self, why: str) -> None:
        """Close the direct channel and have the loader end the worker (it may be running still)."""
        self.ended = self.ended or why
        if self.channel is not None:
            self.channel.close()
        try:
            await unload(self.endpoint, self.handle, 10.0)
        except LoaderCallError as exc:  # a loader that restarted has ended it already
            logger.warning("could not end a sandboxed worker: %s", exc)


class SigstoreModel(SKLearnModel):
    """Drop-in for `mlserver_sklearn.SKLearnModel`: same inputs, outputs and `predict_fn`.

    `load()` never unpickles: the loader verifies the Sigstore bundle and converts the model in
    its sandbox; this process loads the returned skops bytes with a type allowlist. A model it
    cannot validate is served in the loader's sandbox instead (policy `execution`), and
    `predict` then exchanges only plain arrays with it.
    """

    execution: str = ""
    execution_reason: str = ""

    async def load(self) -> bool:
        policy = SigstorePolicy.from_model_settings(self._settings)
        env = RuntimeSettings.current()
        artefact = Path(await get_model_uri(self._settings, wellknown_filenames=WELLKNOWN_MODEL_FILENAMES))
        if not artefact.is_file():
            raise ModelRefused(f"model {self.name!r}: no model file found at {artefact}", 404)
        refuse_code_beside(artefact.parent, "artefact folder")
        source = getattr(self._settings, "_source", None)
        if source:
            refuse_code_beside(Path(source).parent, "model-settings folder")

        mode = policy.sandbox or env.sandbox
        if mode == "docker" and policy.execution == "sandbox":
            raise ModelRefused(
                f"model {self.name!r}: execution 'sandbox' needs a loader that lives as long as the model, and "
                "docker mode starts a loader per load and stops it after; use a loader endpoint "
                "(MLSERVER_SIGSTORE_SANDBOX=endpoint) or execution 'server'",
                400,
            )
        if policy.execution == "sandbox":
            facts, cached = await self._serve(policy, env, artefact, "", "policy execution: sandbox"), False
        else:
            facts, cached = await self._load_here_or_serve(policy, env, artefact, mode)
        logger.info(
            json.dumps(
                {
                    "event": "sigstore_model_loaded",
                    "model": self.name,
                    "sha256": facts.artefact_sha256,
                    "identity": facts.identity,
                    "issuer": facts.issuer,
                    "log_index": facts.log_index,
                    "cached": cached,
                    "execution": self.execution,
                    "why": self.execution_reason,
                }
            )
        )
        self.verification = facts
        return True

    async def _load_here_or_serve(
        self, policy: SigstorePolicy, env: RuntimeSettings, artefact: Path, mode: str
    ) -> tuple[loader_pb2.VerificationFacts, bool]:
        """Load the model in this process if the allowlist and validators accept it; with
        execution "auto" (and a loader endpoint), serve it in the sandbox otherwise."""
        trusted = policy.trusted_types
        fall_back = policy.execution == "auto" and mode == "endpoint"

        def consume(model_file: BinaryIO) -> Any:
            try:
                return load_model(model_file, trusted)
            except ModelRefused as exc:
                if fall_back and exc.status_code == 422:
                    return exc  # cannot be validated here: served in the sandbox below
                raise

        try:
            # On a worker thread, from the passed memfd read as a file (its pages are never mapped
            # into this process), while the loader hashes it; kept only if the digest matches.
            fetched = await self._fetch(policy, env, artefact, consume)
        except ModelRefused as exc:
            # The loader's child could not convert it (a lambda, a class skops cannot write): served
            # by a worker from the bytes the loader kept (or verified again by an older loader);
            # the worker reports its own error if it fails too.
            if fall_back and exc.status_code == 422:
                return await self._serve(policy, env, artefact, exc.sandbox_ticket, f"the loader could not convert it: {exc}"), False
            raise
        if isinstance(fetched.consumed, ModelRefused):
            ticket = fetched.header.sandbox_ticket
            if not ticket:
                raise fetched.consumed
            reason = f"the server cannot validate it: {fetched.consumed}"
            return await self._serve(policy, env, artefact, ticket, reason), fetched.header.cached
        self._model = fetched.consumed
        self.execution, self.execution_reason = "server", "every type is allowlisted and validates"
        if fetched.header.sandbox_ticket:
            # The loader kept the verified artefact in case this process could not take it.
            self._release(policy.endpoint or env.endpoint, fetched.header.sandbox_ticket)
        return fetched.header.facts, fetched.header.cached

    def _release(self, endpoint: str, ticket: str) -> None:
        """Tell the loader, off the load's path, that the artefact it kept is not needed."""

        async def release() -> None:
            try:
                await unload(endpoint, ticket, 10.0)
            except LoaderCallError as exc:  # it expires on its own anyway
                logger.debug("model %r: could not release its sandbox ticket: %s", self.name, exc)

        task = asyncio.get_running_loop().create_task(release())
        _RELEASES.add(task)
        task.add_done_callback(_RELEASES.discard)

    def _request_path(self, env: RuntimeSettings, artefact: Path) -> str:
        if not env.artefacts_root:
            return str(artefact)
        root = Path(env.artefacts_root).resolve()
        if root not in artefact.resolve().parents:
            raise ModelRefused(f"artefact {artefact} is outside MLSERVER_SIGSTORE_ARTEFACTS_ROOT {root}", 400)
        return str(artefact.resolve().relative_to(root))

    async def _serve(
        self, policy: SigstorePolicy, env: RuntimeSettings, artefact: Path, ticket: str, reason: str
    ) -> loader_pb2.VerificationFacts:
        """Have the loader serve the model in a confined worker (by `ticket`, or verified anew)."""
        endpoint = policy.endpoint or env.endpoint
        request = loader_pb2.ServeRequest(
            load=build_request(policy, self._request_path(env, artefact), self.name), sandbox_ticket=ticket, reason=reason
        )
        request.direct_channel = fd_socket_for(endpoint) is not None
        try:
            served = await serve(endpoint, request, env.timeout_seconds)
        except ModelRefused as exc:
            if reason.startswith("policy"):
                raise
            # Say why it went to the sandbox as well: the first refusal is often the telling one.
            raise ModelRefused(f"{exc}; it was sent to the sandbox because {reason}", exc.status_code) from None
        channel = None
        if served.channel_handle:
            try:
                channel = await claim_channel(endpoint, served.channel_handle, env.timeout_seconds)
            except DescriptorsRefused:
                # The loader's kernel (gVisor) passes no descriptor to this process, as the loader
                # now knows: this worker ends with its unclaimed channel, the next answers over gRPC.
                await SandboxedEstimator(endpoint, served, env.timeout_seconds, env.max_predict_bytes).end("no channel")
                request.direct_channel, request.sandbox_ticket = False, ""
                served = await serve(endpoint, request, env.timeout_seconds)
            except LoaderCallError as exc:
                # Unclaimed, the channel's offer expires and the worker ends with it: end it now.
                await SandboxedEstimator(endpoint, served, env.timeout_seconds, env.max_predict_bytes).end("no channel")
                raise ModelRefused(f"model {self.name!r}: could not claim the channel to its sandboxed worker: {exc}", 503) from None
        self._model = SandboxedEstimator(endpoint, served, env.timeout_seconds, env.max_predict_bytes, channel)
        self.execution, self.execution_reason = "sandbox", reason
        return served.facts

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """`SKLearnModel.predict`; for a model served in the sandbox, each requested output is
        computed by its worker from plain arrays and checked here."""
        model = getattr(self, "_model", None)
        if not isinstance(model, SandboxedEstimator):
            return await super().predict(payload)
        payload = self._check_request(payload)
        decoded = self.decode_request(payload, default_codec=NumpyRequestCodec)
        outputs = []
        for request_output in payload.outputs or ():
            result = await model.call(request_output.name, decoded)
            outputs.append(self.encode(result, request_output, default_codec=NumpyCodec))
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    async def unload(self) -> bool:
        """End the model's sandboxed worker, if it has one."""
        model = getattr(self, "_model", None)
        if isinstance(model, SandboxedEstimator):
            await model.end("unloaded")
        return await super().unload()

    async def metadata(self) -> MetadataModelResponse:
        """MLServer's metadata, plus where the model runs and why."""
        found = await super().metadata()
        extra = {"sigstore_execution": self.execution, "sigstore_execution_reason": self.execution_reason}
        found.parameters = Parameters(**{**(found.parameters.model_dump() if found.parameters else {}), **extra})
        return found

    async def _fetch(
        self, policy: SigstorePolicy, env: RuntimeSettings, artefact: Path, consume: Consumer
    ) -> FetchedModel:
        mode = policy.sandbox or env.sandbox
        if mode == "endpoint":
            request = build_request(policy, self._request_path(env, artefact), self.name)
            return await verify_and_load(
                policy.endpoint or env.endpoint, request, env.timeout_seconds, env.max_model_bytes, consume
            )
        if policy.bundle:
            bundle: Path | None = Path(policy.bundle) if Path(policy.bundle).is_absolute() else artefact.parent / policy.bundle
        else:
            bundle = find_bundle(artefact)  # the loader's own rule: .sigstore.json, then .sigstore
        if bundle is None or not bundle.is_file():
            expected = bundle or " or ".join(str(p) for p in bundle_candidates(artefact))
            raise ModelRefused(f"model {self.name!r}: no Sigstore bundle at {expected}", 404)
        sandbox = EphemeralLoader(env, artefact, bundle)
        try:
            endpoint = await sandbox.start()
            await sandbox.wait_ready()
            # An ephemeral loader cannot serve the model after this call: nothing to keep for it.
            update = {"bundle": sandbox.bundle_name, "execution": "server"}
            request = build_request(policy.model_copy(update=update), sandbox.artefact_name, self.name)
            return await verify_and_load(
                endpoint, request, env.timeout_seconds, env.max_model_bytes, consume, reuse_channel=False
            )
        finally:
            await sandbox.stop()
