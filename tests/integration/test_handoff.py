"""The converted model reaches the client as a sealed memfd (SCM_RIGHTS), not through gRPC;
children are pre-forked, confined before they get anything, and never reused."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import io
import os
import secrets
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import blake3
import grpc
import joblib
import numpy as np
import pytest
from sklearn import datasets
from sklearn.neighbors import KNeighborsClassifier

from loader._internal.handoff import Handoff
from loader._internal.memfd import SealedFile, new_memfd, seal
from loader._internal.sandbox import Sandbox, SandboxLimits
from loader.client import DescriptorsRefused, FetchedModel, LoaderCallError, fd_socket_for, receive_fd, verify_and_load
from loader.errors import UnpicklingFailed
from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from runtime.safe_load import load_model
from tests.support import SIGNER, Authority, LoaderProcess, call, put, start_loader, stop_process

_Servicer = TypeVar("_Servicer", bound=Any)
DIGITS = datasets.load_digits()
X = DIGITS.images.reshape((len(DIGITS.images), -1))


@pytest.fixture(scope="module")
def handoff_loader(tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority) -> Iterator[LoaderProcess]:
    # A short socket path: the side channel `<socket>.fd` must fit in 107 bytes too.
    work = Path(os.path.realpath(tmp_path_factory.mktemp("h")))
    proc = start_loader(work, models_root, {"local": authority.trust_config}, "--child-pool=2")
    yield proc
    stop_process(proc.process)


def _request(artefact: str, authority: Authority) -> loader_pb2.VerifyAndLoadRequest:
    return loader_pb2.VerifyAndLoadRequest(
        artefact=artefact, signers=[loader_pb2.Signer(identity=SIGNER, issuer=authority.issuer)], model_name=artefact
    )


def _fetch(loader: LoaderProcess, artefact: str, authority: Authority) -> FetchedModel:
    return asyncio.run(verify_and_load(loader.endpoint, _request(artefact, authority), 60, 1 << 30))


def test_a_unix_client_receives_a_sealed_memfd_and_nothing_is_streamed(handoff_loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    assert fd_socket_for(handoff_loader.endpoint) == Path(str(handoff_loader.socket) + ".fd")
    assert fd_socket_for(handoff_loader.endpoint).is_socket()  # type: ignore[union-attr]
    artefact = put(models_root, "handoff-good", digits_svm_bytes, authority)
    fetched = _fetch(handoff_loader, artefact, authority)
    assert fetched.header.fd_handle, "the loader streamed although the client can take a descriptor"
    data = bytes(fetched.data)
    # The client asked for BLAKE3 (a third of SHA-256's time on large models); a small model's
    # comes in the header (a large one's after the descriptor); others get SHA-256.
    assert fetched.header.model_blake3 and not fetched.header.model_sha256
    assert len(data) == fetched.header.size and fetched.digest == ("blake3", blake3.blake3(data).hexdigest())
    with fetched.open() as file:
        assert file.read() == data
    model = load_model(data, [])
    assert (model.predict(X) == joblib.load(io.BytesIO(digits_svm_bytes)).predict(X)).all()
    # The same bytes come streamed to a client that does not ask for a descriptor.
    header, streamed = call(handoff_loader, artefact, authority)
    assert not header.fd_handle and streamed == data
    assert hashlib.sha256(data).hexdigest() == header.model_sha256 and not header.model_blake3


def test_a_large_model_is_read_while_the_loader_hashes_it(handoff_loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    """Past 8 MB the digest ends the stream: the runtime's load runs meanwhile, on the bytes
    passed, and its result is kept because the digest then matches."""
    rng = np.random.default_rng(0)
    x = rng.random((20_000, 64))  # 10 MB of training data kept by the k-NN
    knn = KNeighborsClassifier(algorithm="brute").fit(x, rng.integers(0, 3, len(x)))
    buffer = io.BytesIO()
    joblib.dump(knn, buffer)
    artefact = put(models_root, "handoff-large", buffer.getvalue(), authority)
    fetched = asyncio.run(
        verify_and_load(handoff_loader.endpoint, _request(artefact, authority), 60, 1 << 30, lambda file: load_model(file, []))
    )
    assert fetched.header.size >= 8 << 20 and not fetched.header.model_blake3 and not fetched.header.model_sha256
    assert fetched.digest == ("blake3", blake3.blake3(bytes(fetched.data)).hexdigest())
    assert (fetched.consumed.predict(x[:50]) == knn.predict(x[:50])).all()


def test_the_passed_memfd_cannot_be_changed_by_anyone(handoff_loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    artefact = put(models_root, "handoff-sealed", digits_svm_bytes, authority)
    fetched = _fetch(handoff_loader, artefact, authority)
    with fetched.open() as file:
        fd = file.fileno()
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        writable = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(writable, b"x", 0)
            with pytest.raises(PermissionError):
                os.ftruncate(writable, 1)
        finally:
            os.close(writable)


def test_a_handle_is_single_use_and_unguessable(handoff_loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    artefact = put(models_root, "handoff-once", digits_svm_bytes, authority)
    request = _request(artefact, authority)
    request.accept_fd = True
    import grpc

    from loader.proto.v1 import loader_pb2_grpc

    with grpc.insecure_channel(handoff_loader.endpoint) as channel:
        replies = list(loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=60))
    assert len(replies) == 1, "model bytes were streamed as well as offered"
    handle = replies[0].header.fd_handle
    side = fd_socket_for(handoff_loader.endpoint)
    assert side is not None
    fd = asyncio.run(receive_fd(side, handle, 60))
    try:
        assert os.fstat(fd).st_size == replies[0].header.size
    finally:
        os.close(fd)
    for attempt in (handle, "0" * len(handle)):
        with pytest.raises(LoaderCallError, match="unknown, used or expired handle"):
            asyncio.run(receive_fd(side, attempt, 60))


@pytest.fixture
def handoff(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Handoff]:
    """A side channel of its own (time to live from `@pytest.mark.parametrize("handoff", [s], indirect=True)`)."""
    side = Handoff(Path(os.path.realpath(tmp_path)) / "x.fd", ttl_seconds=getattr(request, "param", 60.0))
    side.start()
    yield side
    side.stop()


@pytest.mark.parametrize("handoff", [0.2], indirect=True)
def test_an_unclaimed_handle_expires(handoff: Handoff) -> None:
    handle = handoff.offer(_sealed(b"model"))
    time.sleep(0.4)
    with pytest.raises(LoaderCallError, match="expired"):
        asyncio.run(receive_fd(handoff.path, handle, 60))


def test_a_client_waiting_on_its_claim_gets_the_model_the_moment_it_is_offered(handoff: Handoff) -> None:
    """`wait <claim>` before the offer, or after it: either way the descriptor is passed once."""
    early, late = secrets.token_hex(24), secrets.token_hex(24)

    async def scenario() -> tuple[int, int]:
        waiting = asyncio.create_task(receive_fd(handoff.path, early, 60, wait=True))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the side channel answered before anything was offered"
        assert handoff.offer(_sealed(b"first model"), early) == early
        assert handoff.offer(_sealed(b"second model"), late) == late
        return await waiting, await receive_fd(handoff.path, late, 60, wait=True)

    first, second = asyncio.run(scenario())
    assert os.pread(first, 64, 0) == b"first model" and os.pread(second, 64, 0) == b"second model"
    os.close(first)
    os.close(second)
    for used in (early, late):  # single use, as handles the loader chose
        with pytest.raises(LoaderCallError, match="unknown, used or expired handle"):
            asyncio.run(receive_fd(handoff.path, used, 60))


def test_a_claim_in_use_or_ill_formed_is_not_taken_over(handoff: Handoff) -> None:
    claim = secrets.token_hex(24)
    assert handoff.offer(_sealed(b"a"), claim) == claim
    # A second offer under the same claim gets a handle of the loader's own.
    other = handoff.offer(_sealed(b"b"), claim)
    assert other != claim and len(other) == 48
    assert handoff.offer(_sealed(b"c"), "short") not in ("short", claim)
    with pytest.raises(LoaderCallError, match="cannot wait for this handle"):
        asyncio.run(receive_fd(handoff.path, "not-hex" * 7, 5, wait=True))


def test_a_failed_call_ends_the_wait_with_its_reason(handoff: Handoff) -> None:
    claim = secrets.token_hex(24)

    async def scenario() -> None:
        waiting = asyncio.create_task(receive_fd(handoff.path, claim, 60, wait=True))
        await asyncio.sleep(0.2)
        handoff.withdraw(claim, "signer policy failed")
        await waiting

    with pytest.raises(LoaderCallError, match="no model: signer policy failed"):
        asyncio.run(scenario())


def _until(condition: Callable[[], bool], what: str, within: float = 60.0) -> None:
    """Wait for a state the side channel reaches on its own; `within` only ends a run that
    would otherwise hang (the verdict is the state, never the time taken)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.05)


@pytest.mark.concurrency
def test_a_wait_that_arrives_after_its_call_failed_gets_the_reason(handoff: Handoff) -> None:
    """The call can fail before the client's wait is read (a refusal takes milliseconds): the
    late wait is answered with the reason at once, not left open until its time runs out."""
    claim = secrets.token_hex(24)
    handoff.withdraw(claim, "signature check failed")
    with pytest.raises(LoaderCallError, match="no model: signature check failed"):
        asyncio.run(receive_fd(handoff.path, claim, 30, wait=True))
    assert not handoff._waiting


@pytest.mark.concurrency
@pytest.mark.parametrize("handoff", [600.0], indirect=True)
def test_a_waiting_client_that_left_is_let_go_without_any_offer(handoff: Handoff) -> None:
    """A client that gave up closes its connection; the loader closes its end too, although no
    offer or other wait comes to sweep it (the soak saw such sockets pile up)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(handoff.path))
    conn.sendall(f"wait {secrets.token_hex(24)}\n".encode())
    _until(lambda: len(handoff._waiting) == 1, "the wait is parked")
    conn.close()
    _until(lambda: not handoff._waiting, "the loader let go of the client that left")


@contextmanager
def _loader_double(tmp_path: Path, servicer: Callable[[Handoff], _Servicer]) -> Iterator[tuple[str, _Servicer]]:
    """A loader that answers as `servicer` does, with a real side channel and a real gRPC server
    on a Unix socket (the client under test is the real one); yields its endpoint."""
    sock = Path(os.path.realpath(tmp_path)) / "fake.sock"
    handoff = Handoff(Handoff.path_for(sock))
    handoff.start()
    double = servicer(handoff)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    loader_pb2_grpc.add_LoaderServicer_to_server(double, server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield f"unix://{sock}", double
    finally:
        server.stop(0)
        handoff.stop()


class _PushingLoader(loader_pb2_grpc.LoaderServicer):
    """A loader that passes the model to the client's waiting connection, then holds the header
    back until the client has read the model (as the real one hashes it meanwhile): a client
    that waited for the header first would wait here in vain."""

    def __init__(self, handoff: Handoff, model: bytes, announced: bytes) -> None:
        self.handoff, self.model, self.announced = handoff, model, announced
        self.read = threading.Event()
        self.read_before_header = False

    def VerifyAndLoad(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        handle = self.handoff.offer(_sealed(self.model), request.fd_claim)
        self.read_before_header = self.read.wait(60)  # the bound only ends a run that would hang
        header = loader_pb2.LoadedModel(
            format="skops", size=len(self.model), fd_handle=handle, model_blake3=blake3.blake3(self.announced).hexdigest()
        )
        yield loader_pb2.VerifyAndLoadResponse(header=header)


@pytest.mark.concurrency
@pytest.mark.parametrize("digest_of", ["the model", "other bytes"])
def test_the_client_reads_a_pushed_model_before_its_header_arrives(tmp_path: Path, digest_of: str) -> None:
    """...and keeps it only if the header's digest matches."""
    model = b"model bytes " * 1000
    announced = model if digest_of == "the model" else b"other bytes"
    pushing: list[_PushingLoader] = []

    def consume(file: BinaryIO) -> bytes:
        pushing[0].read.set()
        return file.read()

    def double(handoff: Handoff) -> _PushingLoader:
        pushing.append(_PushingLoader(handoff, model, announced))
        return pushing[0]

    with _loader_double(tmp_path, double) as (endpoint, servicer):
        fetch = verify_and_load(endpoint, loader_pb2.VerifyAndLoadRequest(artefact="m"), 30, 1 << 20, consume)
        if digest_of == "the model":
            fetched = asyncio.run(fetch)
            assert fetched.consumed == model and fetched.header.fd_handle and len(fetched.header.fd_handle) == 48
        else:
            with pytest.raises(LoaderCallError, match="do not match"):
                asyncio.run(fetch)
    assert servicer.read_before_header, "the client waited for the header before reading the model"


@pytest.mark.parametrize("sealed", [False, True])
def test_the_client_refuses_an_unsealed_or_altered_memfd(tmp_path: Path, sealed: bool) -> None:
    """A loader that passed a changeable file, or other bytes than its header names, is refused."""
    from loader.client import _check_passed_fd

    fd = new_memfd("t")
    os.write(fd, b"the model")
    header = loader_pb2.LoadedModel(size=9, model_sha256=hashlib.sha256(b"the model").hexdigest())
    if not sealed:
        with pytest.raises(LoaderCallError, match="not sealed"):
            _check_passed_fd(fd, header)
        os.close(fd)
        return
    file = seal(fd)
    _check_passed_fd(file.fd, header)  # control: the right bytes pass
    header.model_sha256 = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(LoaderCallError, match="do not match"):
        _check_passed_fd(file.fd, header)


class _DigestLastLoader(loader_pb2_grpc.LoaderServicer):
    """A loader that passes a real sealed memfd and then sends `digest` (or nothing) last."""

    def __init__(self, handoff: Handoff, model: bytes, digest: loader_pb2.ModelDigest | None) -> None:
        self.handoff, self.model, self.digest, self.requests = handoff, model, digest, []

    def VerifyAndLoad(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.requests.append(request)
        fd = new_memfd("model")
        os.write(fd, self.model)
        handle = self.handoff.offer(seal(fd))
        yield loader_pb2.VerifyAndLoadResponse(header=loader_pb2.LoadedModel(format="skops", size=len(self.model), fd_handle=handle))
        time.sleep(0.3)  # the client reads the model meanwhile
        if self.digest is not None:
            yield loader_pb2.VerifyAndLoadResponse(digest=self.digest)


@pytest.mark.parametrize("sent", ["matching", "other", "none"])
def test_a_model_read_before_its_digest_is_kept_only_if_the_digest_matches(tmp_path: Path, sent: str) -> None:
    model = b"model bytes " * 1000
    digest = {
        "matching": loader_pb2.ModelDigest(blake3=blake3.blake3(model).hexdigest()),
        "other": loader_pb2.ModelDigest(blake3=blake3.blake3(b"other bytes").hexdigest()),
        "none": None,
    }[sent]
    consumed: list[bytes] = []

    def consume(file: BinaryIO) -> str:
        consumed.append(file.read())
        return "the loaded model"

    with _loader_double(tmp_path, lambda handoff: _DigestLastLoader(handoff, model, digest)) as (endpoint, servicer):
        fetch = verify_and_load(endpoint, loader_pb2.VerifyAndLoadRequest(artefact="m"), 30, 1 << 20, consume)
        if sent == "matching":
            fetched = asyncio.run(fetch)
            assert fetched.consumed == "the loaded model" and fetched.digest == ("blake3", digest.blake3)  # type: ignore[union-attr]
        else:
            with pytest.raises(LoaderCallError, match="do not match" if sent == "other" else "without the model's digest"):
                asyncio.run(fetch)
    # The client asked for the digest last, and did read the bytes before it came (this loader
    # offers a handle of its own, as a loader without `fd_claim` does).
    assert servicer.requests[0].digest_after_handle and servicer.requests[0].accept_blake3
    assert consumed == [model]


def test_tcp_endpoints_have_no_side_channel() -> None:
    assert fd_socket_for("127.0.0.1:50051") is None
    assert fd_socket_for("dns:///loader:50051") is None
    assert fd_socket_for("unix:///run/loader/loader.sock") == Path("/run/loader/loader.sock.fd")


def test_a_too_long_socket_path_falls_back_to_streaming(tmp_path: Path, authority: Authority, digits_svm_bytes: bytes) -> None:
    """`<socket>.fd` must fit a Unix socket path; when it cannot, the client gets a stream."""
    base = Path(os.path.realpath(tmp_path))
    deep = base / ("d" * max(1, 104 - len(str(base)) - len("/loader.sock")))
    deep.mkdir()
    sock = deep / "loader.sock"
    assert len(str(sock)) <= 107 < len(str(sock) + ".fd")
    models = base / "models"
    artefact = put(models, "long", digits_svm_bytes, authority)
    proc = start_loader(base, models, {"local": authority.trust_config}, "--child-pool=0", sock=sock)
    try:
        fetched = _fetch(proc, artefact, authority)
    finally:
        stop_process(proc.process)
    assert not fetched.header.fd_handle and len(fetched.data) == fetched.header.size


# The pool ------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.fixture(scope="module")
def pool() -> Iterator[Sandbox]:
    sandbox = Sandbox(SandboxLimits(memory_bytes=512 << 20, wall_seconds=20), pool_size=2)
    sandbox.warm_up()
    yield sandbox
    sandbox.close()


def _sealed(data: bytes) -> SealedFile:
    fd = new_memfd("artefact")
    os.write(fd, data)
    return seal(fd)


def _waiting(sandbox: Sandbox) -> list[int]:
    return [child.proc.pid for child in list(sandbox._ready)]


def test_waiting_children_are_already_confined(pool: Sandbox) -> None:
    waiting = _waiting(pool)
    assert len(waiting) == 2
    for pid in waiting:
        status = _status(pid)
        assert status["Seccomp"].strip() == "2", "a waiting child has no seccomp filter yet"
        assert status["NoNewPrivs"].strip() == "1"
        deadline = time.monotonic() + 120  # a safety net: the state is the verdict
        while not status["State"].startswith("S") and time.monotonic() < deadline:
            time.sleep(0.05)
            status = _status(pid)
        assert status["State"].startswith("S"), "a waiting child should sleep in recvmsg"


def test_each_child_serves_one_artefact_and_the_pool_refills(pool: Sandbox, digits_svm_bytes: bytes) -> None:
    before = set(_waiting(pool))
    used: set[int] = set()
    for _ in range(3):
        ready = set(_waiting(pool))
        converted = pool.convert(_sealed(digits_svm_bytes))
        assert converted.size > 0 and converted.timings["child_total"] > 0
        (taken,) = ready - set(_waiting(pool))
        deadline = time.monotonic() + 120  # a safety net: the state is the verdict
        while Path(f"/proc/{taken}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{taken}").exists(), "the child that served an artefact is still there"
        used.add(taken)
        deadline = time.monotonic() + 120
        while len(pool._ready) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    after = set(_waiting(pool))
    assert len(used) >= 3, "a child served more than one artefact"
    assert not (after & used) and after != before


def test_a_file_that_is_not_a_pickle_is_named(pool: Sandbox) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data.pkl", b"\x80\x04N.")
    with pytest.raises(UnpicklingFailed, match="zip archive .* pickle or joblib file .* was expected"):
        pool.convert(_sealed(archive.getvalue()))


def test_a_cancelled_read_waits_for_its_thread() -> None:
    """A failed call gives up on a model only once the thread reading it is done (a thread cannot
    be stopped; otherwise a retry would start another full read beside it)."""
    from loader.client import _in_thread

    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_read() -> None:
        started.set()
        release.wait(120)  # released only once the call was cancelled
        order.append("read done")

    async def scenario() -> None:
        reading = asyncio.create_task(_in_thread(slow_read))
        await asyncio.to_thread(started.wait, 120)
        reading.cancel()
        for _ in range(5):  # the cancellation reaches the task while the read still runs
            await asyncio.sleep(0)
        order.append("done" if reading.done() else "still waiting")
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await reading
        order.append("given up")

    asyncio.run(scenario())
    assert order == ["still waiting", "read done", "given up"]


def test_closed_waiting_clients_do_not_keep_the_fast_path_full(handoff: Handoff) -> None:
    from loader._internal.handoff import _MAX_WAITING

    idle = []
    for _ in range(_MAX_WAITING):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(handoff.path))
        conn.sendall(f"wait {secrets.token_hex(24)}\n".encode())
        idle.append(conn)
    _until(lambda: len(handoff._waiting) == _MAX_WAITING, "every wait is parked")
    claim = secrets.token_hex(24)

    async def waits() -> int:
        waiting = asyncio.create_task(receive_fd(handoff.path, claim, 60, wait=True))
        await asyncio.sleep(0.2)
        handoff.offer(_sealed(b"model"), claim)
        return await waiting

    with pytest.raises(LoaderCallError, match="cannot wait for this handle"):
        asyncio.run(waits())  # every slot taken by a client still there
    for conn in idle:
        conn.close()
    claim = secrets.token_hex(24)
    fd = asyncio.run(waits())
    assert os.pread(fd, 16, 0) == b"model"
    os.close(fd)


@pytest.mark.parametrize(
    "timings", [{"unpickle": "soon"}, {"unpickle": None}, ["unpickle"], {"unpickle": True}], ids=str
)
def test_malformed_timings_from_the_child_are_refused_before_its_result_goes_anywhere(timings: object) -> None:
    with pytest.raises(UnpicklingFailed, match="malformed stage timings"):
        Sandbox._reported({"ok": True, "timings": timings})
    assert Sandbox._reported({"ok": True, "timings": {"unpickle": 0.5, "convert": 1}}) == (None, {"unpickle": 0.5, "convert": 1.0})


# A slow or vanished client on the side channel (issue 25, item 4, and the two known defects) ---


class _SlowLoris:
    """`count` connections to the side channel, each sending its line a byte at a time, every
    `every` seconds, never finishing it; a connection the loader ends is opened again."""

    def __init__(self, path: Path, count: int, every: float) -> None:
        self.path, self.count, self.every = path, count, every
        self.opened = 0  # connections opened in all (the loader ends slow ones)
        self.rounds = 0  # rounds of a byte on every connection
        self.ready = threading.Event()  # every connection was opened and has sent a byte
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slow-loris")

    def __enter__(self) -> _SlowLoris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()

    def _open(self) -> socket.socket | None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(0.5)  # a full backlog: try again on the next round
        try:
            conn.connect(str(self.path))
            conn.send(b"w")
        except OSError:
            conn.close()
            return None
        self.opened += 1
        return conn

    def _run(self) -> None:
        conns: list[socket.socket | None] = [self._open() for _ in range(self.count)]
        self.ready.set()
        sent = [1] * self.count
        while not self.stop.wait(self.every):  # the attack's pace, not a synchronisation
            for i, conn in enumerate(conns):
                try:
                    if conn is None or sent[i] >= 100:
                        raise OSError
                    conn.send(b"a")
                    sent[i] += 1
                except OSError:
                    if conn is not None:
                        conn.close()
                    conns[i], sent[i] = self._open(), 1
            self.rounds += 1
        for conn in conns:
            if conn is not None:
                conn.close()


def _health(endpoint: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=120).status


@pytest.mark.concurrency
def test_slow_clients_on_the_side_channel_do_not_hold_up_honest_handoffs(
    handoff_loader: LoaderProcess, models_root: Path, authority: Authority, digits_svm_bytes: bytes
) -> None:
    """More slow connections than the side channel serves at once, each a byte a second and
    never done, held open (or opened again) all through the honest loads, which go on until the
    attack has run past the side channel's request deadline."""
    from grpc_health.v1 import health_pb2

    import loader._internal.handoff as handoff_module

    artefact = put(models_root, "handoff-beside-slow-clients", digits_svm_bytes, authority)
    side = fd_socket_for(handoff_loader.endpoint)
    assert side is not None
    slow = getattr(handoff_module, "MAX_PENDING", 64) + 16
    loads, loaded = 0, 0
    with _SlowLoris(side, slow, every=1.0) as attack:
        attack.ready.wait()
        while loads < 20 or attack.rounds < 7:
            loads += 1
            try:
                fetched = asyncio.run(verify_and_load(handoff_loader.endpoint, _request(artefact, authority), 20, 1 << 30))
                loaded += bool(fetched.header.fd_handle) and len(fetched.data) == fetched.header.size
            except LoaderCallError as exc:
                print(f"honest load failed: {exc}")
                if not loaded:
                    break  # the side channel is held: no need to wait out every load
        assert not attack.stop.is_set() and attack.ready.is_set()
        serving = _health(handoff_loader.endpoint)
        opened = attack.opened
    print(f"honest loads beside {slow} slow side-channel clients: {loaded}/{loads} ({opened} slow connections opened)")
    assert loaded == loads
    assert serving == health_pb2.HealthCheckResponse.SERVING


def test_health_says_not_serving_when_the_side_channel_does_not_answer(
    tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority
) -> None:
    """The side channel's socket is gone: no handoff can happen, so health must not say SERVING
    (a liveness probe then restarts the loader)."""
    from grpc_health.v1 import health_pb2

    work = Path(os.path.realpath(tmp_path_factory.mktemp("p")))
    proc = start_loader(work, models_root, {"local": authority.trust_config}, "--child-pool=0")
    try:
        assert _health(proc.endpoint) == health_pb2.HealthCheckResponse.SERVING
        side = fd_socket_for(proc.endpoint)
        assert side is not None
        side.unlink()
        # The loader probes its side channel every few seconds; the guard only ends a run
        # whose health never changes.
        deadline = time.monotonic() + 60
        status = _health(proc.endpoint)
        while status == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.5)
            status = _health(proc.endpoint)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "side channel" in proc.log_text() and "NOT_SERVING" in proc.log_text()
    finally:
        stop_process(proc.process)


class _HeaderNamingTheClaim(loader_pb2_grpc.LoaderServicer):
    """A loader whose header names the client's claim at once (no digest after it)."""

    def VerifyAndLoad(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        header = loader_pb2.LoadedModel(format="skops", size=5, fd_handle=request.fd_claim, model_blake3=blake3.blake3(b"model").hexdigest())
        yield loader_pb2.VerifyAndLoadResponse(header=header)


def test_a_call_waits_on_the_side_channel_no_longer_than_its_own_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A side channel that accepts nothing (its thread held): the wait for the model, then the
    claim of the header's handle, must both end by the call's deadline, not one timeout each.
    Each side-channel attempt's end is recorded as the client sets it."""
    import loader.client as client_module

    sock = Path(os.path.realpath(tmp_path)) / "held.sock"
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(Handoff.path_for(sock)))
    held.listen(16)  # connections queue; none is ever accepted
    server = grpc.server(futures.ThreadPoolExecutor(2))
    loader_pb2_grpc.add_LoaderServicer_to_server(_HeaderNamingTheClaim(), server)
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    ends: list[float] = []
    starts: list[float] = []
    original = client_module.receive_fd

    async def recorded(path: Path, handle: str, timeout: float, wait: bool = False, **kwargs: Any) -> int:
        now = asyncio.get_running_loop().time()
        starts.append(now)
        ends.append(min(now + timeout, kwargs.get("deadline") or float("inf")))
        return await original(path, handle, timeout, wait, **kwargs)

    monkeypatch.setattr(client_module, "receive_fd", recorded)
    timeout = 10.0  # the side channel never answers: the call ends at its deadline
    try:
        with pytest.raises(LoaderCallError, match="could not receive the model descriptor"):
            asyncio.run(verify_and_load(f"unix://{sock}", loader_pb2.VerifyAndLoadRequest(artefact="m"), timeout, 1 << 20))
    finally:
        server.stop(0)
        held.close()
    assert len(ends) == 2, "expected a wait, then a claim"
    assert max(ends) <= starts[0] + timeout, f"the side channel was given {max(ends) - starts[0]:.2f} s of a {timeout} s call"


def test_a_wait_whose_client_gave_up_does_not_use_up_the_stored_offer(handoff: Handoff) -> None:
    """The client sent `wait` and left before its line was read; the model was already offered.
    The descriptor must stay for the client's claim."""
    claim = secrets.token_hex(24)
    assert handoff.offer(_sealed(b"the model"), claim) == claim
    # Held, the side channel's lock keeps its thread from answering the line (it may read it) until
    # the client is gone: the client leaves first on every run, however the threads are scheduled.
    with handoff._lock:
        gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        gone.connect(str(handoff.path))
        gone.sendall(f"wait {claim}\n".encode())
        gone.close()
    fd = _claim_kept_offer(handoff, claim)
    assert os.pread(fd, 64, 0) == b"the model"
    os.close(fd)


def _claim_kept_offer(handoff: Handoff, claim: str) -> int:
    try:
        return asyncio.run(receive_fd(handoff.path, claim, 20))
    except LoaderCallError as exc:
        pytest.fail(f"the offer went to a client that had gone: {exc}")


def test_a_waiting_client_that_left_does_not_take_the_model_it_waited_for(handoff: Handoff) -> None:
    """The client's `wait` was registered, then it left; the model offered next must stay for a
    claim rather than go to the closed connection."""
    claim = secrets.token_hex(24)
    leaving = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leaving.connect(str(handoff.path))
    leaving.sendall(f"wait {claim}\n".encode())
    deadline = time.monotonic() + 20  # a guard: the wait is registered within microseconds
    while claim not in handoff._waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert claim in handoff._waiting
    leaving.close()
    assert handoff.offer(_sealed(b"the model"), claim) == claim
    fd = _claim_kept_offer(handoff, claim)
    assert os.pread(fd, 64, 0) == b"the model"
    os.close(fd)


def test_the_side_channel_answers_the_loaders_probe_and_ends_a_line_that_never_comes(tmp_path: Path) -> None:
    """A connection that never finishes its line is ended once its whole request has taken the
    deadline, however often it sends a byte (here five times within the deadline: a timeout per
    read would never end it, and it would run into the line limit instead)."""
    side = Handoff(Path(os.path.realpath(tmp_path)) / "p.fd", request_seconds=0.5)
    side.start()
    try:
        assert side.probe(timeout=120)
        ended = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
            slow.connect(str(side.path))
            for _ in range(200):
                try:
                    slow.send(b"a")
                except OSError:
                    break  # ended: its message is waiting below
                slow.settimeout(0.1)  # the attack's pace
                try:
                    ended = slow.recv(128)
                    break
                except TimeoutError:
                    continue
            slow.settimeout(20)
            ended = ended or slow.recv(128)
        assert b"took too long" in ended, ended
    finally:
        side.stop()
    assert not side.probe(timeout=1)


def _refusing_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader's sendmsg with SCM_RIGHTS fails as it does from inside gVisor to a host
    process (EINVAL). The real refusal is tested with the loader under runsc
    (tests/container/test_loader_container.py); this pins the protocol on any kernel."""

    def send_fds(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr("loader._internal.handoff.socket.send_fds", send_fds)


def test_a_client_waiting_where_descriptors_do_not_pass_is_told_to_ask_streamed(handoff: Handoff, monkeypatch: pytest.MonkeyPatch) -> None:
    _refusing_kernel(monkeypatch)
    claim = secrets.token_hex(24)

    async def wait_then_offer() -> BaseException:
        waiting = asyncio.create_task(receive_fd(handoff.path, claim, 20, wait=True))
        while claim not in handoff._waiting:  # noqa: SLF001 - the wait is registered within microseconds
            await asyncio.sleep(0.01)
        assert handoff.offer(_sealed(b"the model"), claim) == ""  # not offered: the call streams it
        try:
            await waiting
        except BaseException as exc:  # noqa: BLE001 - what the client raised is the result
            return exc
        raise AssertionError("a descriptor arrived although the kernel refused to pass it")

    raised = asyncio.run(wait_then_offer())
    assert isinstance(raised, DescriptorsRefused), raised
    assert not handoff.passes_descriptors


def test_a_claim_where_descriptors_do_not_pass_is_told_to_ask_streamed(handoff: Handoff, monkeypatch: pytest.MonkeyPatch) -> None:
    _refusing_kernel(monkeypatch)
    handle = handoff.offer(_sealed(b"the model"))
    with pytest.raises(DescriptorsRefused):
        asyncio.run(receive_fd(handoff.path, handle, 20))
    assert not handoff.passes_descriptors
