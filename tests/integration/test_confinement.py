"""Confinement by allowlist on the host: the child reads nothing but the interpreter's files and
makes only the syscalls recorded for real models (loader/_internal/confine.py, syscalls.py).

Every hostile case first runs unconfined in a throwaway interpreter and must work there (the
file is read, the syscall succeeds): only then does the confined refusal count.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import skops.io

from loader._internal.confine import LANDLOCK_SETTING, landlock_abi
from tests import controls, hostile, hostile_reads, model_corpus
from tests.integration.test_loader import test_a_signed_hostile_pickle_is_contained as _hostile_pickle_is_contained
from tests.support import PYTHON, Authority, LoaderProcess, call, put, refused, stop_process, wait_for_health

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


# --- What a confined child inherits, and what it can signal (issue 25, items 2 and 3) ---------


def _proc_children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _fds(pid: int) -> dict[int, str]:
    folder = Path(f"/proc/{pid}/fd")
    return {int(fd): os.readlink(folder / fd) for fd in os.listdir(folder)}


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def _helpers(loader_pid: int) -> tuple[int, int]:
    """The loader's fork server and resource tracker (both unconfined loader processes)."""
    roles = {_cmdline(pid).split("from multiprocessing.", 1)[-1].split(" ")[0]: pid for pid in _proc_children(loader_pid)}
    return roles["forkserver"], roles["resource_tracker"]


# x86_64's recvmsg: a confined process blocked in it has finished starting (a conversion child
# warms up after its filter is loaded, importing lazily, so it holds passing descriptors until
# then) and waits with exactly the descriptors it will hold.
_SYS_RECVMSG = 47


def _blocked_in_recvmsg(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return bool(fields) and fields[0] == str(_SYS_RECVMSG)


def _waiting_children(forkserver: int) -> list[int]:
    """The fork server's children that have loaded their syscall filter (one filter more than
    the fork server has) and wait in recvmsg: the pre-forked confined children, waiting for an
    artefact."""
    baseline = int(_status(forkserver, "Seccomp_filters"))
    deadline = time.monotonic() + 90  # a wait for the pool to refill, not a verdict
    while time.monotonic() < deadline:
        confined = []
        for pid in _proc_children(forkserver):
            try:
                if int(_status(pid, "Seccomp_filters")) > baseline and _blocked_in_recvmsg(pid):
                    confined.append(pid)
            except (OSError, KeyError):
                continue
        if confined:
            return confined
        time.sleep(0.2)
    raise AssertionError("no confined child waited in the pool within 90 s")


def _check_holds_only_its_own(child: int, loader_fds: set[str], helper_fds: set[str]) -> None:
    fds = _fds(child)
    assert {0, 1, 2} <= set(fds), f"child {child} holds {fds}"
    assert fds[0] == "/dev/null" and fds[1] == fds[2] and fds[1].startswith("pipe:["), fds
    rest = sorted(target.split(":")[0] for fd, target in fds.items() if fd > 2)
    # A conversion child: its status pipe and control socket; a sandboxed worker waiting to be
    # given a model: its control socket alone.
    assert rest in (["pipe", "socket"], ["socket"]), f"child {child} holds {fds}"
    pipes = {target for target in fds.values() if target.startswith("pipe:[")}
    assert pipes <= loader_fds, f"a pipe whose other end is not the loader's: {pipes - loader_fds}"
    assert not pipes & helper_fds, f"a pipe shared with the fork server or resource tracker: {pipes & helper_fds}"


def _kind(child: int) -> str:
    return "worker" if sum(t.startswith("socket:") for t in _fds(child).values()) == 1 and len(_fds(child)) == 4 else "child"


def test_a_waiting_child_holds_exactly_its_descriptors_and_its_own_process_group(loader: LoaderProcess) -> None:
    """Both kinds of confined process the fork server starts: the conversion children and the
    spare sandboxed worker (started ahead of a model served in the sandbox)."""
    forkserver, tracker = _helpers(loader.process.pid)
    deadline = time.monotonic() + 90  # a wait for the pools to fill, not a verdict
    while True:
        children = _waiting_children(forkserver)
        kinds = set()
        for child in children:
            try:
                kinds.add(_kind(child))
            except FileNotFoundError:
                continue
        if kinds == {"worker", "child"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    loader_fds = set(_fds(loader.process.pid).values())
    helper_fds = set(_fds(forkserver).values()) | set(_fds(tracker).values())
    for child in children:
        try:
            _check_holds_only_its_own(child, loader_fds, helper_fds)
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # taken by a load meanwhile
        # Its own session and process group: not the loader's (whose group a signal could reach).
        assert (int(fields[2]), int(fields[3])) == (child, child), f"pgrp/session {fields[2:4]} of child {child}"
        assert os.getpgid(loader.process.pid) != child
    assert kinds == {"worker", "child"}, f"only {kinds} seen waiting: both kinds must be checked"


def test_a_signed_model_cannot_write_to_the_fork_server_or_the_resource_tracker(loader: LoaderProcess, models_root: Path, authority: Authority, tmp_path: Path) -> None:
    artefact = hostile.inherited_pipes()
    name = put(models_root, "inherited-pipes", artefact, authority)
    fired = controls.run_harness_on_host(controls.old_child_harness_argv(str(models_root / name), PYTHON), tmp_path)
    assert "FIRED: alive written; tracker written" in fired.decode(errors="replace"), fired[-2000:]
    assert b"HARNESS FORKSERVER-ENDED" in fired, "the control's byte did not end its fork server"

    forkserver, tracker = _helpers(loader.process.pid)
    error = refused(loader, name, authority)
    assert hostile.CONTAINED + " alive refused" in error.details() and "register refused" in error.details() and "written" not in error.details(), error.details()
    assert controls.FIRED not in error.details()
    assert _helpers(loader.process.pid) == (forkserver, tracker), "the fork server or the tracker was replaced"
    assert loader.process.poll() is None


# Loaders whose children run without Landlock's signal scope: forced off, forced to ABI 5, and a
# kernel without Landlock (a seccomp filter on the loader makes landlock_* fail with ENOSYS, as
# on a kernel built without it; this one needs no setting, so it also runs on older code).
_WITHOUT_LANDLOCK_KERNEL = (
    "import errno, os, sys, pyseccomp as s\n"
    "f = s.SyscallFilter(s.ALLOW)\n"
    "for name in ('landlock_create_ruleset', 'landlock_add_rule', 'landlock_restrict_self'):\n"
    "    f.add_rule(s.ERRNO(errno.ENOSYS), name)\n"
    "f.load()\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'loader', *sys.argv[1:]])\n"
)
FALLBACK_STATUS = {
    "off": "landlock: forced off by MLSERVER_SIGSTORE_LANDLOCK=off (testing/diagnosis only); children run with rlimits and seccomp only",
    "abi:5": "landlock: ABI 5 enforced (forced below the kernel's ABI",
    # No /sandbox tree on the host: the chroot view cannot stand in (the container tier's runsc loader has it).
    "no-landlock-kernel": "landlock: unavailable (Function not implemented); no chroot view either (/sandbox (the image's software tree) is missing); children run with rlimits and seccomp only",
}


@pytest.fixture(scope="module", params=sorted(FALLBACK_STATUS))
def fallback_loader(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_root: Path, authority: Authority) -> Iterator[tuple[str, LoaderProcess]]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"loader-{mode.replace(':', '-')}")
    sock, log = workdir / "loader.sock", workdir / "loader.log"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    env.pop(LANDLOCK_SETTING, None)
    if mode == "no-landlock-kernel":
        # Neither Landlock nor the view: the loader starts only when told to accept it.
        head = [PYTHON, "-c", _WITHOUT_LANDLOCK_KERNEL, "serve", "--allow-unconfined-reads"]
    else:
        head = [PYTHON, "-m", "loader", "serve"]
        env[LANDLOCK_SETTING] = mode
    args = [*head, f"--socket={sock}", f"--models-root={models_root}", f"--trust-config=local={authority.trust_config}",
            "--default-trust=local", "--child-wall-seconds=60", "--child-cpu-seconds=3", "--child-memory-mb=256"]
    with log.open("wb") as out:
        # A session of its own: a signal sent to the loader's group must reach nothing else.
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    try:
        wait_for_health(f"unix://{sock}", process=proc)
        yield mode, LoaderProcess(sock, models_root, proc, log)
    finally:
        stop_process(proc)


def test_without_landlock_or_the_view_the_loader_refuses_to_start_unless_told(tmp_path: Path, models_root: Path) -> None:
    """Fail closed: where nothing would hold the children's reads, `loader serve` exits naming why
    and what to do; with --allow-unconfined-reads it starts (the fixture above) and says so."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    env.pop(LANDLOCK_SETTING, None)
    done = subprocess.run(
        [PYTHON, "-c", _WITHOUT_LANDLOCK_KERNEL, "serve", f"--socket={tmp_path / 'l.sock'}", f"--models-root={models_root}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "FAIL: no filesystem layer would hold the confined processes' reads" in done.stderr and "--allow-unconfined-reads" in done.stderr
    assert not (tmp_path / "l.sock").exists()


def test_the_loader_says_when_landlock_is_off_or_below_the_kernel(fallback_loader: tuple[str, LoaderProcess]) -> None:
    mode, loader = fallback_loader
    details = subprocess.run(
        [PYTHON, "-m", "loader", "health", f"--endpoint={loader.endpoint}", "--details"], capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    for text in (loader.log_text(), details):
        assert FALLBACK_STATUS[mode] in text, text
        if mode == "abi:5":
            assert "without signal and abstract-socket scoping" in text, text
    if mode == "no-landlock-kernel":
        assert "(accepted with --allow-unconfined-reads)" in loader.log_text()


def test_the_children_apply_what_the_loader_announces(fallback_loader: tuple[str, LoaderProcess], models_root: Path, authority: Authority) -> None:
    """Without Landlock a child reads what the loader's user may (seccomp allows read-only
    opens); at ABI 5 Landlock still refuses. (A child whose Landlock differs from the loader's
    status line is never used: the pool refuses it.)"""
    mode, loader = fallback_loader
    secret = Path("/etc/passwd").read_bytes()
    name = put(models_root, f"fallback-reads-{mode.replace(':', '-')}", hostile_reads.read_file("/etc/passwd"), authority)
    header, data = call(loader, name, authority)
    stolen = bytes(skops.io.loads(data, trusted=list(header.untrusted_types)).stolen_)
    if mode == "abi:5":
        assert stolen.startswith(b"refused: PermissionError"), stolen[:200]
    else:
        assert stolen == secret, stolen[:200]


def test_a_signed_model_cannot_have_the_kernel_signal_the_loader_without_landlock(fallback_loader: tuple[str, LoaderProcess], models_root: Path, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path) -> None:
    """fcntl(F_SETOWN -pgrp, F_SETSIG, O_ASYNC) on the output pipe: unconfined, the process that
    reads the pipe is signalled; confined, every step is refused and the loader keeps serving."""
    mode, loader = fallback_loader
    artefact = hostile.sigio_to_group(signal.SIGUSR1)
    name = put(models_root, f"sigio-{mode.replace(':', '-')}", artefact, authority)
    report = controls.harness_report(controls.run_harness_on_host(controls.signal_harness_argv(str(models_root / name), PYTHON), tmp_path))
    assert report["signalled"] and controls.FIRED in report["error"], report

    error = refused(loader, name, authority)
    details = error.details()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, details
    assert hostile.CONTAINED in details and controls.FIRED not in details, details
    for step in ("F_SETOWN", "FIOSETOWN", "F_SETSIG", "O_ASYNC", "FIOASYNC"):
        assert f"{step} refused: Operation not permitted" in details, details
    assert loader.process.poll() is None, "the loader died"
    good = put(models_root, "good-after-sigio", digits_svm_bytes, authority)
    header, data = call(loader, good, authority)
    assert header.size == len(data) > 0


# The catalogue's cases that seccomp, rlimits and the process group hold on their own (reads of
# files are Landlock's: without it a child reads what the loader's user may read).
FALLBACK_TECHNIQUES = [
    "signal-parent", "ptrace-parent", "fork-bomb", "reduce-os-system", "reduce-subprocess", "socket-inet",
    "socket-unix", "write-file", "replace-socket", "fill-scratch", "memory-bomb",
    "io_uring_setup", "userfaultfd", "bpf", "perf_event_open", "keyctl", "unshare",
]


# The kernel without Landlock gets the same filters as "off": one of the two runs the catalogue.
@pytest.mark.parametrize("fallback_loader", ["abi:5", "off"], indirect=True)
@pytest.mark.parametrize("case", FALLBACK_TECHNIQUES)
def test_a_signed_hostile_pickle_is_contained_without_landlock(fallback_loader: tuple[str, LoaderProcess], models_root: Path, authority: Authority, digits_svm_bytes: bytes, tmp_path: Path, request: pytest.FixtureRequest, case: str) -> None:
    mode, loader = fallback_loader
    _hostile_pickle_is_contained(loader, models_root, authority, digits_svm_bytes, tmp_path, request, case)
