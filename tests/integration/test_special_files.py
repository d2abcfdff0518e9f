"""A FIFO, socket or device in the models root is refused at once, naming what it is (issue 25,
item 5): a request naming one must not hold a gRPC worker thread, and honest loads go on.

Code that opens a file before checking its type blocks in `open` on a FIFO until a writer comes;
each request here has a deadline only so that such a run ends (and the test then plays the
writer, freeing the loader's thread). Verdicts are the status and message of the answer.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import grpc
import model_signing
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import loader._internal.signed_manifest as signed_manifest
from loader.errors import BadRequest
from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from tests.support import SIGNER, Authority, LoaderProcess, put, start_loader, stop_process

KINDS = {"fifo": "a FIFO (named pipe)", "socket": "a socket", "character device": "a character device"}
# Longer than any answer takes; reached only by code that blocks on the file.
GUARD_SECONDS = 20
# What an honest load or health check beside the attack may take on a busy host: a safety net.
HONEST_SECONDS = 120
_sockets: list[socket.socket] = []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[LoaderProcess]:
    work = Path(os.path.realpath(tmp_path_factory.mktemp("special")))
    models = work / "models"
    models.mkdir()
    # Two loads at once: six gRPC worker threads, fewer than the FIFO requests sent below.
    proc = start_loader(work, models, {"local": authority.trust_config}, "--child-pool=1", "--max-concurrent-loads=2")
    yield proc
    release_readers(models)
    stop_process(proc.process)
    for listener in _sockets:
        listener.close()


def make_special(kind: str, path: Path) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        _sockets.append(listener)
    else:
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers


def release_readers(root: Path) -> None:
    """Open every FIFO under `root` for writing once: a reader blocked in `open` returns."""
    for path in root.rglob("*"):
        if stat.S_ISFIFO(path.lstat().st_mode):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # nobody is reading it


def blocked_in_fifo_open(pids: list[int]) -> bool:
    """True if a thread of these processes waits in `open` for a FIFO's other end (the kernel's
    wait channel says so: a fact, not a guess from time)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                if (task / "wchan").read_text() == "wait_for_partner":
                    return True
            except OSError:
                continue
    return False


def request(artefact: str, authority: Authority) -> loader_pb2.VerifyAndLoadRequest:
    return loader_pb2.VerifyAndLoadRequest(
        artefact=artefact, signers=[loader_pb2.Signer(identity=SIGNER, issuer=authority.issuer)], model_name=artefact
    )


def answer(endpoint: str, asked: loader_pb2.VerifyAndLoadRequest, timeout: float = GUARD_SECONDS) -> grpc.RpcError | None:
    """The call's error (None if it loaded), within `timeout` (the guard deadline)."""
    with grpc.insecure_channel(endpoint) as channel:
        try:
            list(loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(asked, timeout=timeout))
        except grpc.RpcError as exc:
            return exc
    return None


def until_answered(answers: list[grpc.StatusCode], count: int) -> None:
    """Until every attacker has had an answer: the honest loads then start amid the attack. (A
    loader that blocks on the FIFO answers none: the guard ends the wait, its workers all held.)"""
    deadline = time.monotonic() + GUARD_SECONDS
    while len(answers) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def placed(models: Path, name: str, place: str, kind: str, authority: Authority, model: bytes) -> tuple[str, Path]:
    """A signed model whose artefact or bundle is then replaced by a special file."""
    artefact = put(models, name, model, authority)
    target = models / artefact if place == "artefact" else models / (artefact + ".sigstore.json")
    make_special(kind, target)
    return artefact, target


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("place", ["artefact", "bundle"])
def test_a_special_file_as_artefact_or_bundle_is_refused_naming_it(
    served: LoaderProcess, authority: Authority, digits_svm_bytes: bytes, place: str, kind: str
) -> None:
    artefact, target = placed(served.models_root, f"{place}-{kind.replace(' ', '-')}", place, kind, authority, digits_svm_bytes)
    error = answer(served.endpoint, request(artefact, authority))
    blocked = blocked_in_fifo_open([served.process.pid])
    release_readers(served.models_root)
    assert not blocked, f"a loader thread is blocked opening {target}"
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"{place} {target} is {KINDS[kind]}; only a regular file can be loaded" in (error.details() or "")


@pytest.mark.concurrency
def test_honest_loads_keep_succeeding_while_fifo_requests_run(
    served: LoaderProcess, authority: Authority, digits_svm_bytes: bytes
) -> None:
    """More FIFO requests at once than the loader has worker threads, sent again as each is
    answered, while honest loads and health checks run."""
    honest = put(served.models_root, "honest-beside-fifos", digits_svm_bytes, authority)
    fifo_artefact, _ = placed(served.models_root, "fifo-bundle-attack", "bundle", "fifo", authority, digits_svm_bytes)
    attackers = 8
    started = threading.Barrier(attackers + 1)
    stop = threading.Event()
    refused: list[grpc.StatusCode] = []

    def attack() -> None:
        started.wait()
        while not stop.is_set():
            error = answer(served.endpoint, request(fifo_artefact, authority))
            refused.append(error.code() if error is not None else grpc.StatusCode.OK)

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    started.wait()
    until_answered(refused, attackers)
    loads, loaded, healthy = 30, 0, 0
    try:
        for _ in range(loads):
            error = answer(served.endpoint, request(honest, authority), HONEST_SECONDS)
            loaded += error is None
            with grpc.insecure_channel(served.endpoint) as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HONEST_SECONDS).status
                    healthy += status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    pass
            if error is not None:
                break  # the loader is stuck: no need to wait out every load
    finally:
        stop.set()
        for thread in threads:
            while thread.is_alive():
                release_readers(served.models_root)
                thread.join(1)
    print(f"honest loads while FIFO requests ran: {loaded}/{loads}; health SERVING {healthy}/{loads}; FIFO requests answered: {len(refused)}")
    assert loaded == loads and healthy == loads
    assert refused and set(refused) == {grpc.StatusCode.INVALID_ARGUMENT}


def test_a_fifo_swapped_into_a_signed_directory_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that was a regular file when the directory was listed and is a FIFO when it is
    hashed (the listing refuses one already there): the swap is made by a hook after the listing."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.joblib").write_bytes(b"model bytes")
    (directory / "metadata.json").write_text(json.dumps({"name": "m"}))
    signed = model_signing.hashing.Config().use_file_serialization().hash(directory)
    member = directory / "metadata.json"
    listed = signed_manifest._walk

    def walk_then_swap(folder: Path, ignore: list[PurePosixPath]) -> list[PurePosixPath]:
        found = listed(folder, ignore)
        make_special("fifo", member)
        return found

    monkeypatch.setattr(signed_manifest, "_walk", walk_then_swap)
    outcome: list[BaseException | None] = []
    tid: list[int] = []

    def check() -> None:
        tid.append(threading.get_native_id())
        try:
            signed_manifest.check_directory(signed, directory, PurePosixPath("model.joblib"), b"model bytes", [], 1 << 20)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the verdict looks at it
            outcome.append(exc)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(5)
    blocked = False
    while thread.is_alive():
        if Path(f"/proc/self/task/{tid[0]}/wchan").read_text() == "wait_for_partner":
            blocked = True  # blocked opening the FIFO: be its writer so that the thread ends
            release_readers(directory)
        thread.join(1)
    assert not blocked, f"hashing the directory blocked opening {member}"
    assert isinstance(outcome[0], BadRequest), outcome[0]
    assert f"model directory member {member} is a FIFO (named pipe)" in str(outcome[0])


def test_a_fifo_already_in_a_signed_directory_is_named_by_the_listing(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.joblib").write_bytes(b"model bytes")
    signed = model_signing.hashing.Config().use_file_serialization().hash(directory)
    os.mkfifo(directory / "extra")
    with pytest.raises(Exception, match=r"extra in the model directory .* is a FIFO \(named pipe\), not a regular file"):
        signed_manifest.check_directory(signed, directory, PurePosixPath("model.joblib"), b"model bytes", [], 1 << 20)
