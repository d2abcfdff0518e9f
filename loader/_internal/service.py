"""The verify-and-load pipeline: read once, verify that buffer, unpickle it confined, cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from prometheus_client import Counter, Histogram

from loader._internal.inference import Served, Workers
from loader._internal.memfd import SealedFile
from loader._internal.paths import ModelsRoot, read_once, read_sealed
from loader._internal.sandbox import Converted, Sandbox
from loader._internal.verify import SignedBundle, Signer, TrustRoots, Verified, verify_bundle
from loader.background import run_in_background
from loader.errors import BadRequest, LimitExceeded, LoaderError, NotFound, UnpicklingFailed

VERIFICATIONS = Counter("loader_verifications_total", "VerifyAndLoad requests by result", ["result"])
LOAD_SECONDS = Histogram(
    "loader_load_seconds", "VerifyAndLoad duration", buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
)
SERVED = Counter("loader_served_models_total", "Models started in a sandboxed worker")
_log = logging.getLogger("loader")
# How long, and how many, verified artefacts an EXECUTION_AUTO load keeps for `serve`.
TICKET_SECONDS = 120.0
_MAX_TICKETS = 32


@dataclass(frozen=True)
class LoadRequest:
    artefact: str
    signers: tuple[Signer, ...]
    bundle: str = ""
    trust_root: str = ""
    model_name: str = ""
    trusted_types: tuple[str, ...] = ()
    # Paths of a signed model directory that its model-signing bundle does not cover.
    ignore_paths: tuple[str, ...] = ()
    # The caller needs skops' list of types it does not trust by default.
    report_types: bool = True
    # "server", or "auto": keep the verified bytes for `serve` under a ticket.
    execution: str = "server"


@dataclass(frozen=True)
class LoadResult:
    verified: Verified
    converted: Converted
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    sandbox_ticket: str = ""


@dataclass(frozen=True)
class ServiceLimits:
    max_artefact_bytes: int = 4 << 30
    max_bundle_bytes: int = 1 << 20
    max_concurrent_loads: int = 2
    queue_timeout_seconds: float = 120.0
    cache_bytes: int = 1 << 30


class _ResultCache:
    """LRU of converted models, bounded by total bytes."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._items: OrderedDict[tuple, LoadResult] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> LoadResult | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple, result: LoadResult) -> None:
        size = result.converted.size
        if size > self._budget:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = result
            self._size += size
            while self._size > self._budget:
                _, evicted = self._items.popitem(last=False)
                self._size -= evicted.converted.size


class _Tickets:
    """Verified artefacts kept briefly for `serve`, by a random single-use ticket."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, SealedFile, Verified]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, artefact: SealedFile, verified: Verified) -> str:
        ticket = secrets.token_hex(24)
        now = time.monotonic()
        with self._lock:
            self._items[ticket] = (now + TICKET_SECONDS, artefact, verified)
            while len(self._items) > _MAX_TICKETS:
                self._items.popitem(last=False)[1][1].close()
        # Kept memory is the size of a model: it goes when its time is up, load or no load.
        run_in_background(self.sweep, after=TICKET_SECONDS + 1)
        return ticket

    def take(self, ticket: str) -> tuple[SealedFile, Verified] | None:
        with self._lock:
            found = self._items.pop(ticket, None)
        if found is None:
            return None
        if found[0] < time.monotonic():
            found[1].close()
            return None
        return found[1], found[2]

    def release(self, ticket: str) -> bool:
        """The caller loaded the model itself: the kept artefact goes now."""
        with self._lock:
            found = self._items.pop(ticket, None)
        if found is not None:
            found[1].close()
        return found is not None

    def sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [ticket for ticket, (until, _, _) in self._items.items() if until < now]
            gone = [self._items.pop(ticket)[1] for ticket in expired]
        for artefact in gone:
            artefact.close()


@contextmanager
def _recorded(event: str, record: dict[str, object], seconds: Histogram | None = None) -> Iterator[None]:
    """One request's log line and outcome count: a refusal (a LoaderError) or an error is counted
    and recorded here, success by the body; the line is written however the request ends."""
    started = time.perf_counter()
    try:
        yield
    except LoaderError as exc:
        VERIFICATIONS.labels(result=exc.code.name.lower()).inc()
        # Not converted but kept for Serve (an "auto" load) is not the model's final verdict.
        kept = isinstance(exc, UnpicklingFailed) and exc.sandbox_ticket
        record.update(verdict="kept for the sandbox" if kept else "refused", code=exc.code.name, reason=str(exc))
        raise
    except Exception as exc:
        VERIFICATIONS.labels(result="internal").inc()
        record.update(verdict="error", code="INTERNAL", reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        elapsed = time.perf_counter() - started
        if seconds is not None:
            seconds.observe(elapsed)
        record["seconds"] = round(elapsed, 4)
        stage_timings = record.get("timings")
        if isinstance(stage_timings, dict):
            record["timings"] = {k: round(v, 4) for k, v in stage_timings.items()}
        print(json.dumps({"event": event, **record}), file=sys.stderr, flush=True)


def _timed_read(path: Path, max_bytes: int) -> tuple[SealedFile, str, float]:
    started = time.perf_counter()
    artefact, digest = read_sealed(path, "artefact", max_bytes)
    return artefact, digest, time.perf_counter() - started


class LoaderService:
    """Everything one VerifyAndLoad does, independent of the transport."""

    def __init__(
        self,
        root: ModelsRoot,
        trust_roots: TrustRoots,
        sandbox: Sandbox,
        limits: ServiceLimits | None = None,
        workers: Workers | None = None,
    ) -> None:
        self.root = root
        self.trust_roots = trust_roots
        self.sandbox = sandbox
        self.limits = limits or ServiceLimits()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent_loads)
        self._cache = _ResultCache(self.limits.cache_bytes)
        self._inflight: dict[tuple, threading.Lock] = {}
        self._inflight_lock = threading.Lock()
        # One reader per load that may run at once (gRPC serves a few more calls than that).
        # Models served in the sandbox (None: this loader only hands models back).
        self.workers = workers
        self._tickets = _Tickets()
        self._readers = ThreadPoolExecutor(self.limits.max_concurrent_loads + 4, thread_name_prefix="artefact-read")

    def load(self, request: LoadRequest, on_sealed: Callable[[SealedFile], None] | None = None) -> LoadResult:
        """Verify and convert one artefact; raise a LoaderError subclass on any refusal.
        `on_sealed` gets a freshly converted model the moment it is sealed (not a cached one)."""
        record: dict[str, object] = {"model": request.model_name, "artefact": request.artefact}
        with _recorded("verify_and_load", record, LOAD_SECONDS):
            result = self._load(request, record, on_sealed)
            VERIFICATIONS.labels(result="loaded").inc()
            record.update(
                verdict="loaded",
                identity=result.verified.identity,
                issuer=result.verified.issuer,
                cached=result.cached,
            )
        return result

    def _load(
        self, request: LoadRequest, record: dict[str, object], on_sealed: Callable[[SealedFile], None] | None
    ) -> LoadResult:
        timings: dict[str, float] = {}
        record["timings"] = timings  # filled in as stages complete, refused requests included
        model_path, bundle, artefact, digest, signed = self._read_and_verify(request, record, timings)
        key = (
            digest,
            hashlib.sha256(bundle).hexdigest(),
            tuple(sorted(request.signers, key=repr)),
            request.trust_root or self.trust_roots.default,
            request.ignore_paths,
        )
        with self._inflight_lock:
            gate = self._inflight.setdefault(key, threading.Lock())
        # Identical concurrent requests (MLServer's parallel workers) wait for one result.
        try:
            with gate:
                # Verified on every load, cached or not: the rest of a model directory may
                # have changed although the model file and the bundle did not.
                verified = self._bind(signed, artefact, digest, request, model_path, timings, record)
                cached = self._cache.get(key)
                if cached is not None and (cached.converted.untrusted_types is not None or not request.report_types):
                    result = LoadResult(verified, cached.converted, timings, cached=True)
                else:
                    try:
                        result = self._convert(artefact, verified, request.report_types, timings, record, on_sealed)
                    except UnpicklingFailed as exc:
                        if request.execution == "auto" and self.workers is not None:
                            # Not a final refusal: the caller serves it in a worker from these bytes.
                            exc.sandbox_ticket = self._tickets.put(artefact, verified)
                        raise
                    self._cache.put(key, result)
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
        if request.execution == "auto" and self.workers is not None:
            # The verified bytes, kept for `serve` should the caller be unable to validate the model.
            ticket = self._tickets.put(artefact, verified)
            result = dataclasses.replace(result, sandbox_ticket=ticket)
        # The loader only reports types; the runtime's allowlist (runtime/safe_load.py) decides.
        return result

    def _read_and_verify(
        self, request: LoadRequest, record: dict[str, object], timings: dict[str, float]
    ) -> tuple[Path, bytearray, SealedFile, str, SignedBundle]:
        """Read the artefact into a sealed memfd while its bundle is verified (not yet bound to it)."""
        record["stage"] = "read"
        artefact_path = self.root.resolve(request.artefact, "artefact")
        # A model directory is loaded through its well-known model file; the file's directory
        # is what a model-signing bundle covering more than one file must match.
        model_path = self.root.model_file(artefact_path)
        # The bundle first: a request refused for its bundle must not leave a read behind.
        bundle_path = self.root.bundle_for(artefact_path, request.bundle)
        bundle = read_once(bundle_path, "bundle", self.limits.max_bundle_bytes)
        # Read once into the sealed memfd that is verified here and unpickled by the child,
        # hashed on the way (one pass: the stage is "read" and includes hashing), on another
        # thread while the bundle's signature is verified here; waited for whatever the verdict.
        reading = self._readers.submit(_timed_read, model_path, self.limits.max_artefact_bytes)
        record["stage"] = "verify"
        t1 = time.perf_counter()
        try:
            signed: SignedBundle | LoaderError = verify_bundle(
                bundle, list(request.signers), self.trust_roots, request.trust_root
            )
        except LoaderError as exc:
            signed = exc
        except BaseException:
            futures.wait([reading])  # nothing is left reading once the request has its answer
            raise
        timings["verify"] = time.perf_counter() - t1
        record["stage"] = "read"
        # A file that cannot be read is the first thing to fix: its error wins.
        artefact, digest, timings["read"] = reading.result()
        if isinstance(signed, LoaderError):
            record["stage"] = "verify"
            raise signed
        record["sha256"] = digest
        return model_path, bundle, artefact, digest, signed

    def release_ticket(self, ticket: str) -> bool:
        """The caller loaded the model in its own process: drop what was kept for `serve`."""
        return self._tickets.release(ticket)

    def serve(
        self, request: LoadRequest, ticket: str = "", reason: str = "", channel: bool = False
    ) -> tuple[Verified, Served]:
        """Serve a verified model in a confined worker: the artefact verified anew, or the bytes an
        EXECUTION_AUTO load kept under `ticket`; with `channel`, the worker also serves a direct
        channel (Served.channel). Raises a LoaderError subclass on any refusal."""
        record: dict[str, object] = {"model": request.model_name, "artefact": request.artefact, "execution": "sandbox"}
        timings: dict[str, float] = {}
        record["timings"] = timings
        with _recorded("serve", record):
            if self.workers is None:
                raise BadRequest("this loader does not serve models (started with --max-served-models=0)")
            if ticket:
                record["stage"] = "ticket"
                kept = self._tickets.take(ticket)
                if kept is None:
                    raise NotFound("the sandbox ticket is unknown or expired: load the model again")
                artefact, verified = kept
            else:
                model_path, _, artefact, digest, signed = self._read_and_verify(request, record, timings)
                verified = self._bind(signed, artefact, digest, request, model_path, timings, record)
            record["stage"] = "serve"
            served = self.workers.start(artefact.fd, request.model_name or request.artefact, channel)
            timings.update(served.timings)
            VERIFICATIONS.labels(result="served").inc()
            SERVED.inc()
            record.update(verdict="served", identity=verified.identity, issuer=verified.issuer, why=reason, sha256=verified.artefact_sha256)
        return verified, served

    def _bind(
        self,
        signed: SignedBundle,
        artefact: SealedFile,
        digest: str,
        request: LoadRequest,
        model_path: Path,
        timings: dict[str, float],
        record: dict[str, object],
    ) -> Verified:
        record["stage"] = "verify"
        t0 = time.perf_counter()
        # The sealed memfd's bytes cannot change any more: verified here, unpickled by the child.
        with artefact.mapped(populate=False) as view:
            verified = signed.bind(
                cast(bytes, view), digest,
                directory=model_path.parent, model_file=model_path.name, ignore_paths=request.ignore_paths,
                max_bytes=self.limits.max_artefact_bytes,
            )
        timings["verify"] += time.perf_counter() - t0
        return verified

    def _convert(
        self,
        artefact: SealedFile,
        verified: Verified,
        report_types: bool,
        timings: dict[str, float],
        record: dict[str, object],
        on_sealed: Callable[[SealedFile], None] | None,
    ) -> LoadResult:
        t1 = time.perf_counter()
        # Nothing is unpickled before this line, and only the bytes just verified are.
        if not self._slots.acquire(timeout=self.limits.queue_timeout_seconds):
            raise LimitExceeded(
                f"all {self.limits.max_concurrent_loads} load slots stayed busy for "
                f"{self.limits.queue_timeout_seconds:g} s; retry later"
            )
        try:
            record["stage"] = "unpickle"
            t2 = time.perf_counter()
            timings["queue"] = t2 - t1
            converted = self.sandbox.convert(artefact, report_types, on_sealed)
            timings.update({f"child_{k}" if k in ("unpickle", "convert") else k: v for k, v in converted.timings.items()})
        finally:
            self._slots.release()
        # The result's digest is taken when a client asks for it (server.py): a client that
        # accepts it after the descriptor reads the model meanwhile.
        return LoadResult(verified, converted, timings)
