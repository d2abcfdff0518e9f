"""Confinement by allowlist on the host: the child reads nothing but the interpreter's files and
makes only the syscalls recorded for real models (loader/_internal/confine.py, syscalls.py).

Every hostile case first runs unconfined in a throwaway interpreter and must work there (the
file is read, the syscall succeeds): only then does the confined refusal count.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest
import skops.io

from loader._internal.confine import landlock_abi
from tests import hostile_reads, model_corpus
from tests.support import Authority, LoaderProcess, call, put, refused

SIBLING_SECRET = b"TENANT-B-MODEL-BYTES:" + os.urandom(32).hex().encode()


@pytest.fixture(scope="module")
def landlock() -> int:
    try:
        return landlock_abi()
    except OSError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"this kernel has no Landlock ({exc.strerror}); the CI machine must have it")
        pytest.skip(f"this kernel has no Landlock ({exc.strerror})")


def _targets(models_root: Path, authority: Authority) -> dict[str, Path]:
    sibling = models_root / "tenant-b" / "model.joblib"
    sibling.parent.mkdir(parents=True, exist_ok=True)
    sibling.write_bytes(SIBLING_SECRET)
    return {"sibling-model": sibling, "trust-config": authority.trust_config, "etc-passwd": Path("/etc/passwd")}


def test_the_loader_logs_that_landlock_is_enforced(loader: LoaderProcess, landlock: int) -> None:
    assert f"landlock: ABI {landlock} enforced" in loader.log_text()


@pytest.mark.parametrize("target", ["sibling-model", "trust-config", "etc-passwd"])
def test_a_signed_model_cannot_read_files_and_return_them(loader: LoaderProcess, models_root: Path, authority: Authority, tmp_path: Path, landlock: int, target: str) -> None:
    path = _targets(models_root, authority)[target]
    secret = path.read_bytes()
    artefact = hostile_reads.read_file(str(path))
    assert bytes(hostile_reads.unconfined(artefact, tmp_path)) == secret, "the payload did not read the file unconfined"
    name = put(models_root, f"reads-{target}", artefact, authority)
    header, data = call(loader, name, authority)
    stolen = bytes(skops.io.loads(data, trusted=list(header.untrusted_types)).stolen_)
    assert stolen.startswith(b"refused: PermissionError"), stolen[:200]
    assert secret not in data and secret[:32] not in data
    assert SIBLING_SECRET not in data and authority.trust_config.read_bytes()[:64] not in data


# What the confined child gets: killed (dangerous families), or an error code in `stolen_`.
KILLED = "killed by SIGSYS"
SYSCALL_OUTCOMES = {
    "openat2": errno.ENOSYS,  # glibc would fall back to openat, which Landlock then rules on
    "syscall-999": errno.EPERM,
    "name_to_handle_at": KILLED,
    "open_by_handle_at": KILLED,
    "sysv-msgget": KILLED,
    "posix-mq_open": KILLED,
    "process_madvise": KILLED,
}


@pytest.mark.parametrize("name", hostile_reads.SYSCALLS)
def test_a_signed_model_cannot_make_unlisted_syscalls(loader: LoaderProcess, models_root: Path, authority: Authority, tmp_path: Path, name: str) -> None:
    artefact = hostile_reads.call_syscall(name)
    result, code = hostile_reads.as_syscall_result(hostile_reads.unconfined(artefact, tmp_path))
    if name == "syscall-999":
        assert (result, code) == (-1, errno.ENOSYS), "syscall 999 did not reach the kernel unconfined"
    else:
        assert result >= 0, f"{name} failed unconfined: {os.strerror(code)}"
    artefact_name = put(models_root, f"syscall-{name}", artefact, authority)
    expected = SYSCALL_OUTCOMES[name]
    if expected == KILLED:
        error = refused(loader, artefact_name, authority)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and KILLED in error.details(), error.details()
    else:
        header, data = call(loader, artefact_name, authority)
        stolen = skops.io.loads(data, trusted=list(header.untrusted_types)).stolen_
        assert hostile_reads.as_syscall_result(stolen) == (-1, expected)
    assert loader.process.poll() is None, "the loader died"


def test_the_recorded_model_corpus_loads(loader: LoaderProcess, models_root: Path, authority: Authority) -> None:
    """No false refusal: every family of the recording corpus (small sizes) loads confined."""
    failures = {}
    for name, data in model_corpus.corpus().items():
        artefact = put(models_root, f"corpus-{name}", data, authority)
        try:
            header, converted = call(loader, artefact, authority)
        except grpc.RpcError as exc:
            failures[name] = exc.details()
            continue
        assert header.size == len(converted) > 0
    assert failures == {}
