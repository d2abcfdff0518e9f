"""Special files in the models root, against the hardened loader container (issue 25, item 5):
a FIFO, socket or device as artefact or bundle is refused at once naming what it is, and honest
loads go on while FIFO requests run. Requests carry a deadline only so that code blocking on a
FIFO ends; verdicts are the answers' status and message."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import docker
from loader.client import verify_and_load
from tests.container.conftest import LoaderContainer, running_loader
from tests.integration.test_special_files import (
    GUARD_SECONDS,
    KINDS,
    answer,
    blocked_in_fifo_open,
    make_special,
    release_readers,
    request,
    until_answered,
)
from tests.support import Authority


@pytest.fixture(scope="module")
def container(docker_client: docker.DockerClient, authority: Authority) -> Iterator[LoaderContainer]:
    with running_loader(docker_client, authority) as loader:
        try:
            yield loader
        finally:
            release_readers(loader.models)


def _placed(lc: LoaderContainer, name: str, place: str, kind: str, authority: Authority, model: bytes) -> tuple[str, str]:
    """A signed model whose artefact or bundle is replaced by a special file; (artefact, the
    replaced path as the container sees it)."""
    artefact = lc.put(name, model, authority)
    relative = artefact if place == "artefact" else artefact + ".sigstore.json"
    make_special(kind, lc.models / relative)
    return artefact, f"/models/{relative}"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("place", ["artefact", "bundle"])
def test_a_special_file_as_artefact_or_bundle_is_refused_naming_it(
    container: LoaderContainer, authority: Authority, digits_svm_bytes: bytes, place: str, kind: str
) -> None:
    artefact, seen = _placed(container, f"{place}-{kind.replace(' ', '-')}", place, kind, authority, digits_svm_bytes)
    error = answer(container.endpoint, request(artefact, authority))
    pids = [int(row[0]) for row in container.container.top(ps_args="-eo pid")["Processes"] or []]
    blocked = blocked_in_fifo_open(pids)
    release_readers(container.models)
    assert not blocked, f"a loader thread is blocked opening {seen}"
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"{place} {seen} is {KINDS[kind]}; only a regular file can be loaded" in (error.details() or "")


def test_honest_loads_keep_succeeding_while_fifo_requests_run(
    container: LoaderContainer, authority: Authority, digits_svm_bytes: bytes
) -> None:
    honest = container.put("honest", digits_svm_bytes, authority)
    fifo_artefact, _ = _placed(container, "fifo-attack", "bundle", "fifo", authority, digits_svm_bytes)
    attackers = 8  # more than the loader's gRPC worker threads
    started = threading.Barrier(attackers + 1)
    stop = threading.Event()
    refused: list[grpc.StatusCode] = []

    def attack() -> None:
        started.wait()
        while not stop.is_set():
            error = answer(container.endpoint, request(fifo_artefact, authority))
            refused.append(error.code() if error is not None else grpc.StatusCode.OK)

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    started.wait()
    until_answered(refused, attackers)
    loads, loaded, healthy = 30, 0, 0
    try:
        for _ in range(loads):
            try:
                # The real client: the model comes over the side channel, across the container.
                fetched = asyncio.run(verify_and_load(container.endpoint, request(honest, authority), GUARD_SECONDS, 1 << 30))
                loaded += bool(fetched.header.fd_handle)
            except Exception as exc:  # noqa: BLE001 - counted; the rate is the verdict
                print(f"honest load failed: {exc}")
                break  # the loader is stuck: no need to wait out every load
            with grpc.insecure_channel(container.endpoint) as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=GUARD_SECONDS).status
                    healthy += status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    pass
    finally:
        stop.set()
        for thread in threads:
            while thread.is_alive():
                release_readers(container.models)
                thread.join(1)
    print(f"container: honest loads while FIFO requests ran: {loaded}/{loads}; health SERVING {healthy}/{loads}; FIFO requests answered: {len(refused)}")
    assert loaded == loads and healthy == loads
    assert refused and set(refused) == {grpc.StatusCode.INVALID_ARGUMENT}
