"""Confinement by allowlist in the container: the child's Landlock and filter inside the loader
container, and the container's own default-deny profile (runtime/seccomp-loader.json).

Each hostile read first runs in the control container (no sandbox, same mounts), where it must
get the file's bytes; then the loader container must hand back a model that carries none.
"""

from __future__ import annotations

import errno
import io
import tarfile

import pytest
import skops.io

from tests import hostile_reads
from tests.container.conftest import ControlContainer, LoaderContainer
from tests.support import Authority, call

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
    assert stolen.startswith(b"refused: PermissionError"), stolen[:200]
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
