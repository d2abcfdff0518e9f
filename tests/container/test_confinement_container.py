"""Confinement by allowlist in the container: the child's Landlock and filter inside the loader
container, and the container's own default-deny profile (runtime/seccomp-loader.json).

Each hostile read first runs in the control container (no sandbox, same mounts), where it must
get the file's bytes; then the loader container must hand back a model that carries none.
"""

from __future__ import annotations

import errno
import io
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import skops.io

import docker
from loader._internal.confine import LANDLOCK_SETTING
from tests import controls, hostile, hostile_reads
from tests.container.conftest import RUNTIMES, ControlContainer, LoaderContainer, running_loader
from tests.integration.test_confinement import (
    _check_holds_only_its_own,
    _cmdline,
    _fds,
    _helpers,
    _proc_children,
    _waiting_children,
)
from tests.support import Authority, call, refused

TRUST = "/trust/trust_config.json"
SIBLING = b"TENANT-B-MODEL-BYTES:container"


def _place(control: ControlContainer, path: str, data: bytes) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    control.container.put_archive("/", archive.getvalue())


def _unconfined(control: ControlContainer, loader: LoaderContainer, name: str, artefact: bytes, authority: Authority) -> bytes:
    path = loader.put(name, artefact, authority)
    script = "import joblib, sys; sys.stdout.buffer.write(joblib.load(sys.argv[1]).stolen_.tobytes())"
    result = control.container.exec_run(["python", "-c", script, f"/models/{path}"], demux=True)
    return bytes(result.output[0] or b"")


# Under gVisor (no Landlock) the child reads only the image's software tree it is chrooted into
# (loader/_internal/view.py): the file is not there (ENOENT) rather than refused (EACCES).
_REFUSED_READ = {"runc": b"refused: PermissionError", "runsc": b"refused: FileNotFoundError"}


@pytest.mark.parametrize("loader_container", RUNTIMES, indirect=True)
@pytest.mark.parametrize("target", ["sibling-model", "trust-config", "etc-passwd"])
def test_a_signed_model_in_the_container_cannot_read_files(loader_container: LoaderContainer, control_container: ControlContainer, authority: Authority, target: str) -> None:
    trust = authority.trust_config.read_bytes()
    sibling = loader_container.models / "tenant-b" / "model.joblib"
    sibling.parent.mkdir(exist_ok=True)
    sibling.parent.chmod(0o755)
    sibling.write_bytes(SIBLING)
    sibling.chmod(0o644)
    _place(control_container, TRUST, trust)
    path = {"sibling-model": "/models/tenant-b/model.joblib", "trust-config": TRUST, "etc-passwd": "/etc/passwd"}[target]
    artefact = hostile_reads.read_file(path)
    fired = _unconfined(control_container, loader_container, f"control-read-{target}", artefact, authority)
    assert fired and not fired.startswith(b"refused"), f"the payload did not read {path} unconfined: {fired[:200]!r}"
    name = loader_container.put(f"read-{target}", artefact, authority)
    header, data = call(loader_container, name, authority)  # type: ignore[arg-type]
    stolen = bytes(skops.io.loads(data, trusted=list(header.untrusted_types)).stolen_)
    assert stolen.startswith(_REFUSED_READ[loader_container.runtime]), stolen[:200]
    assert fired not in data and SIBLING not in data and trust[:64] not in data


@pytest.mark.parametrize(
    ("name", "number", "args"),
    # (A number past the kernel's table, such as 999, gets ENOSYS from runc's own stub, not EPERM.)
    [("getpriority", 140, "0, 0"), ("msgget", 68, "0, 0o1001"), ("mq_open", 240, "b'q', 0o102, 0o600, None")],
)
def test_the_container_profile_denies_what_was_not_recorded(loader_container: LoaderContainer, control_container: ControlContainer, name: str, number: int, args: str) -> None:
    """Outside the child too: the container's own filter refuses syscalls the loader never made."""
    code = (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = libc.syscall({number}, {args}); print(r, ctypes.get_errno())"
    )
    fired = control_container.container.exec_run(["python", "-c", code]).output.decode().split()
    assert int(fired[0]) >= 0, f"{name} failed in the control container: {fired}"
    exit_code, out = loader_container.exec_python(code)
    assert exit_code == 0 and out.split() == ["-1", str(errno.EPERM)], f"{name}: {out}"


def test_the_loader_container_logs_that_landlock_is_enforced(loader_container: LoaderContainer) -> None:
    assert "landlock: ABI" in loader_container.container.logs().decode() and "enforced" in loader_container.container.logs().decode()


# --- What a confined child inherits, and what it can signal (issue 25, items 2 and 3) ---------
# The container's processes are read from the host's /proc (the tests run as root on the host).


def _loader_pid(loader: LoaderContainer) -> int:
    loader.container.reload()
    pid = int(loader.container.attrs["State"]["Pid"])
    for candidate in [pid, *_proc_children(pid)]:
        if "-m loader" in _cmdline(candidate):
            return candidate
    raise AssertionError(f"no loader process under container pid {pid}")


def test_a_waiting_child_in_the_container_holds_exactly_its_descriptors(loader_container: LoaderContainer) -> None:
    loader = _loader_pid(loader_container)
    forkserver, tracker = _helpers(loader)
    children = _waiting_children(forkserver)
    loader_fds = set(_fds(loader).values())
    helper_fds = set(_fds(forkserver).values()) | set(_fds(tracker).values())
    checked = 0
    for child in children:
        try:
            _check_holds_only_its_own(child, loader_fds, helper_fds)
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        assert (int(fields[2]), int(fields[3])) == (child, child), f"pgrp/session {fields[2:4]} of child {child}"
        checked += 1
    assert checked


def test_a_signed_model_in_the_container_cannot_write_to_the_fork_server_or_the_tracker(loader_container: LoaderContainer, control_container: ControlContainer, authority: Authority) -> None:
    name = loader_container.put("inherited-pipes", hostile.inherited_pipes(), authority)
    result = control_container.container.exec_run(controls.old_child_harness_argv(f"/models/{name}"), environment={"OPENBLAS_NUM_THREADS": "1"})
    assert b"FIRED: alive written; tracker written" in result.output and b"HARNESS FORKSERVER-ENDED" in result.output, result.output[-2000:]

    loader = _loader_pid(loader_container)
    helpers = _helpers(loader)
    error = refused(loader_container, name, authority)  # type: ignore[arg-type]
    assert hostile.CONTAINED + " alive refused" in error.details() and "register refused" in error.details() and "written" not in error.details(), error.details()
    assert _helpers(loader) == helpers
    assert loader_container.container.status == "running"


@pytest.fixture(scope="module", params=["off", "abi:5"])
def fallback_container(request: pytest.FixtureRequest, docker_client: docker.DockerClient, authority: Authority) -> Iterator[tuple[str, LoaderContainer]]:
    with running_loader(docker_client, authority, environment={LANDLOCK_SETTING: request.param}) as loader:
        yield request.param, loader


def test_a_signed_model_in_the_container_cannot_have_the_kernel_signal_the_loader_without_landlock(fallback_container: tuple[str, LoaderContainer], loader_container: LoaderContainer, control_container: ControlContainer, authority: Authority, digits_svm_bytes: bytes) -> None:
    mode, loader = fallback_container
    logs = loader.container.logs().decode()
    assert ("forced off by" if mode == "off" else "landlock: ABI 5 enforced (forced below") in logs, logs
    artefact = hostile.sigio_to_group(signal.SIGUSR1)
    control_path = loader_container.put(f"sigio-{mode.replace(':', '-')}", artefact, authority)
    result = control_container.container.exec_run(controls.signal_harness_argv(f"/models/{control_path}"), environment={"OPENBLAS_NUM_THREADS": "1"})
    report = controls.harness_report(result.output)
    assert report["signalled"] and controls.FIRED in report["error"], report

    name = loader.put(f"sigio-{mode.replace(':', '-')}", artefact, authority)
    error = refused(loader, name, authority)  # type: ignore[arg-type]
    details = error.details()
    assert hostile.CONTAINED in details and controls.FIRED not in details, details
    for step in ("F_SETOWN", "F_SETSIG", "O_ASYNC", "FIOASYNC"):
        assert f"{step} refused: Operation not permitted" in details, details
    loader.container.reload()
    assert loader.container.status == "running"
    header, data = call(loader, loader.put("good-after-sigio", digits_svm_bytes, authority), authority)  # type: ignore[arg-type]
    assert header.size == len(data) > 0
