"""Faults around the loader container: each gives a clear error, no hang, and recovery."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from mlserver.errors import MLServerError

import docker
from runtime.errors import ModelRefused
from tests import hostile
from tests.container.conftest import LoaderContainer, running_loader
from tests.support import Authority, wait_for_health


@pytest.fixture(autouse=True)
def _short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # A safety net: a broken connection is UNAVAILABLE at once, only a hang waits for this.
    monkeypatch.setenv("MLSERVER_SIGSTORE_TIMEOUT_SECONDS", "300")


def test_loader_killed_mid_load_then_restarted(docker_client: docker.DockerClient, authority: Authority, digits_svm_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # The child's wall limit far above the kill: on a busy host the kill, not the limit, ends the load.
    with running_loader(docker_client, authority, "--child-wall-seconds=600") as lc:
        monkeypatch.setenv("MLSERVER_SIGSTORE_ARTEFACTS_ROOT", str(lc.models))
        slow = lc.model("slow", hostile.run_python("import time; time.sleep(3600)"), authority)
        landed: list[str] = []

        def kill_mid_load() -> None:
            # Kill only once the payload runs: a process of the container sleeps in nanosleep,
            # which only the unpickling child does (the loader waits in poll/recvmsg/futex).
            deadline = time.monotonic() + 300  # a safety net: the loop ends when the payload runs
            while time.monotonic() < deadline and not landed:
                landed.extend(_sleeping_in_container(lc))
                time.sleep(0.1)
            killed_at.append(time.monotonic())
            lc.container.kill()

        killed_at: list[float] = []
        killer = threading.Thread(target=kill_mid_load)
        killer.start()
        with pytest.raises(ModelRefused) as exc:
            asyncio.run(slow.load())
        refused_at = time.monotonic()
        killer.join()
        assert landed, "the kill did not land while the payload was being unpickled"
        assert exc.value.status_code == 503 and "UNAVAILABLE" in str(exc.value), str(exc.value)
        # UNAVAILABLE is the broken connection, not the deadline (DEADLINE_EXCEEDED): the
        # figure is printed, not judged.
        print(f"refused {refused_at - killed_at[0]:.1f} s after the kill")
        # The loader never logged a verdict for it: the load was cut off mid-way.
        logs = lc.container.logs(stdout=False, stderr=True).decode(errors="replace")
        assert '"artefact": "slow/model.joblib"' not in logs, logs[-2000:]
        # Restart the same container: the same model object loads without restarting anything.
        (lc.socket_dir / "loader.sock").unlink(missing_ok=True)
        lc.container.start()
        wait_for_health(lc.endpoint, timeout=90)
        good = lc.model("good", digits_svm_bytes, authority)
        assert asyncio.run(good.load())


def _sleeping_in_container(lc: LoaderContainer) -> list[str]:
    """Host PIDs of the container's processes blocked in nanosleep (read from the host's /proc)."""
    found = []
    for row in lc.container.top(ps_args="-eo pid")["Processes"] or []:
        try:
            wchan = Path(f"/proc/{row[0]}/wchan").read_text()
        except OSError:
            continue
        if "nanosleep" in wchan:
            found.append(row[0])
    return found


def test_socket_removed_gives_a_clear_error(docker_client: docker.DockerClient, authority: Authority, digits_svm_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_loader(docker_client, authority) as lc:
        monkeypatch.setenv("MLSERVER_SIGSTORE_ARTEFACTS_ROOT", str(lc.models))
        good = lc.model("good", digits_svm_bytes, authority)
        (lc.socket_dir / "loader.sock").unlink()
        with pytest.raises(ModelRefused) as exc:
            asyncio.run(good.load())
        assert exc.value.status_code == 503
        # UNAVAILABLE (connection refused at once), not DEADLINE_EXCEEDED after a wait.
        assert "UNAVAILABLE" in str(exc.value) and str(lc.socket_dir) in str(exc.value)
        # Restarting the loader recreates the socket; the next load works.
        lc.container.restart(timeout=5)
        wait_for_health(lc.endpoint, timeout=90)
        assert asyncio.run(good.load())


def test_artefact_deleted_before_read_is_not_found(loader_container: LoaderContainer, authority: Authority, digits_svm_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSERVER_SIGSTORE_ARTEFACTS_ROOT", str(loader_container.models))
    model = loader_container.model("deleted", digits_svm_bytes, authority)
    (loader_container.models / "deleted" / "model.joblib").unlink()
    # MLServer itself resolves the URI first and says so (422); the loader's NOT_FOUND for a file
    # that disappears later is covered by the replacement race in tests/integration/test_tamper.py.
    with pytest.raises(MLServerError) as exc:
        asyncio.run(model.load())
    assert exc.value.status_code == 422 and "deleted" in str(exc.value)
