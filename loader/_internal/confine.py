"""Confinement of the child: rlimits, then Landlock, then a default-deny seccomp filter.

`confine` runs in the child after it has set up its descriptors and before it touches the
artefact; before it, `leave_loader_group` and `hold_only` take the child out of the loader's
process group and session and close every descriptor it does not need. From then on the child
can compute, read and write the descriptors it holds, and read the interpreter's own files;
nothing else. Every step fails closed (an exception means the child refuses to run), except
that a kernel without Landlock leaves the filesystem step out, which `landlock_status` reports
so the loader can say so at start.

For tests and diagnosis only, MLSERVER_SIGSTORE_LANDLOCK=off leaves Landlock out and
MLSERVER_SIGSTORE_LANDLOCK=abi:N applies it as ABI N would (at most the kernel's), so that the
fallbacks of older kernels can be exercised on a new one; the status line says so.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import resource
import signal
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass

import pyseccomp as seccomp

from loader._internal import syscalls, view
from loader._internal.kernel import detect as detect_kernel
from loader._internal.kernel import kernel_lines, own_seccomp_mode

_CLONE_THREAD = 0x00010000
# fcntl commands the child may use (include/uapi/asm-generic/fcntl.h, linux/fcntl.h): duplicate,
# read and set the close-on-exec flag, read the status flags. F_SETFL only without O_ASYNC. Any
# other command gets the default: F_SETOWN(_EX), F_SETSIG and O_ASYNC would have the kernel
# signal another process (or process group) on I/O, F_SETLEASE and F_NOTIFY on file events.
_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL, _F_SETFL, _F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
_FCNTL_ALLOWED = (_F_DUPFD, _F_GETFD, _F_SETFD, _F_GETFL, _F_DUPFD_CLOEXEC)
_O_ASYNC = 0o20000
# open/openat flags that ask for more than reading (O_WRONLY, O_RDWR, O_CREAT, O_TRUNC; O_TMPFILE
# needs write access too).
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000


@dataclass(frozen=True)
class ChildLimits:
    """What the child applies to itself (rlimits) before it touches the artefact."""

    memory_bytes: int = 1 << 30
    cpu_seconds: int = 30
    max_open_files: int = 64
    max_result_bytes: int = 1 << 30


_PR_SET_PDEATHSIG = 1


def leave_loader_group() -> None:
    """Start a session and process group of the child's own, and die with the fork server.

    A signal aimed at the child's process group (kill(0), F_SETOWN to -pgrp) then reaches only
    the child, never the loader or its other processes; and a child outlives no loader (the
    fork server exits when the loader does)."""
    parent = os.getppid()
    os.setsid()
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the fork server ended before the line above
        os._exit(0)


def hold_only(keep: Iterable[int]) -> None:
    """Close every descriptor of the process except `keep`.

    A forked child inherits whatever its parent held: the fork server's and multiprocessing's
    pipes (its "alive" pipe, the resource tracker's) lead to processes that are not confined.
    Callers must drop their own references to what this closes."""
    low = 0
    # No descriptor can be above the soft limit: it is the same as when each was opened.
    for fd in (*sorted(set(keep)), os.sysconf("SC_OPEN_MAX")):
        if fd > low:  # os.closerange(n, n) would close every descriptor from n up (close_range)
            os.closerange(low, fd)
        low = max(low, fd + 1)


def isolate(keep: Iterable[int]) -> None:
    """Cut a freshly forked process off from the loader before it is confined: a session and
    process group of its own, exactly the descriptors `keep`, and multiprocessing's references
    to what was closed dropped. The conversion child and the sandboxed worker both start here."""
    leave_loader_group()
    hold_only(keep)
    _forget_closed_descriptors()


def _forget_closed_descriptors() -> None:
    """Drop multiprocessing's references to descriptors `hold_only` closed (the fork server's
    "alive" pipe, the resource tracker's pipe, the parent sentinel), so that nothing writes to
    a number a later open reuses. Without its pipe, the resource tracker is out of reach: a
    registration would have to start a new tracker, and the process can start no other."""
    from multiprocessing import forkserver, process, resource_tracker

    forkserver._forkserver._forkserver_alive_fd = None  # type: ignore[attr-defined]
    resource_tracker._resource_tracker._fd = None  # type: ignore[attr-defined]
    process._parent_process = None  # type: ignore[attr-defined]


def apply_limits(limits: ChildLimits) -> None:
    """Set the child's rlimits (address space, CPU, descriptors, file size, no new processes)."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    for res, value in (
        (resource.RLIMIT_AS, mapped + limits.memory_bytes),
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
        # Caps what the child can write into the result memfd; it can open no file to write.
        (resource.RLIMIT_FSIZE, limits.max_result_bytes),
        (resource.RLIMIT_NPROC, 0),
    ):
        resource.setrlimit(res, value if isinstance(value, tuple) else (value, value))


# --- Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every arch.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 2, 1 << 3
# Every filesystem right each ABI knows: ABI 1 has bits 0-12, 2 adds REFER, 3 TRUNCATE,
# 5 IOCTL_DEV. Handling a right that no rule grants denies it everywhere.
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_RIGHTS_LATEST = (1 << 16) - 1
_NET_TCP = (1 << 0) | (1 << 1)  # bind and connect (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract Unix sockets and signals outside the domain (ABI 6)
# Never granted, whatever a mapped library or package path says.
_NEVER_READABLE = ("/etc", "/proc", "/sys", "/dev", "/run", "/tmp", "/models")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; raises OSError when Landlock is missing or disabled."""
    return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))


LANDLOCK_SETTING = "MLSERVER_SIGSTORE_LANDLOCK"
# Read once at import: the fork server imports this module with the loader's environment, and
# each child clears its environment before it confines itself.
_landlock_setting = os.environ.get(LANDLOCK_SETTING, "")


def forced_landlock_abi() -> int | None:
    """The ABI that MLSERVER_SIGSTORE_LANDLOCK forces (0: off), or None when it is unset.

    For tests and diagnosis only: it weakens the children's confinement. An unknown value
    raises ValueError, so that neither the loader nor a child starts with it."""
    value = _landlock_setting.strip()
    if not value:
        return None
    if value == "off":
        return 0
    if value.startswith("abi:") and value[4:].isdigit() and int(value[4:]) >= 1:
        return int(value[4:])
    raise ValueError(f"{LANDLOCK_SETTING}={value!r} is not understood: use 'off' or 'abi:N' (N >= 1), or leave it unset")


@functools.cache
def _view_refused() -> str | None:
    """Why children cannot enter the chroot view here (None: they can); probed once per process."""
    return view.probe()


def _effective_landlock() -> tuple[int, bool, str]:
    """The ABI children apply (0: none), whether they enter the chroot view instead, and the
    status line that says so."""
    forced = forced_landlock_abi()
    if forced == 0:
        return 0, False, (
            f"landlock: forced off by {LANDLOCK_SETTING}=off (testing/diagnosis only); "
            "children run with rlimits and seccomp only"
        )
    try:
        kernel = landlock_abi()
    except OSError as exc:
        refused = _view_refused()
        if refused is None:
            return 0, True, (
                f"landlock: unavailable ({exc.strerror}); children read only the image's own files "
                f"instead: a chroot into {view.VIEW_ROOT} in a user namespace of their own, no capabilities "
                "(not the models, the trust configs given to the loader, /etc or /proc), with rlimits and seccomp"
            )
        return 0, False, (
            f"landlock: unavailable ({exc.strerror}); no chroot view either ({refused}); "
            "children run with rlimits and seccomp only and read what the loader's user can"
        )
    abi = kernel if forced is None else min(kernel, forced)
    line = f"landlock: ABI {abi} enforced"
    if abi < kernel:
        line += f" (forced below the kernel's ABI {kernel} by {LANDLOCK_SETTING}=abi:{forced}, testing/diagnosis only)"
    missing = [what for since, what in ((4, "TCP bind/connect"), (6, "signal and abstract-socket scoping")) if abi < since]
    if missing:
        line += "; without " + " or ".join(missing) + " (seccomp and the child's own process group hold those)"
    return abi, False, line


def unconfined_reads() -> str | None:
    """Why the children would read what the loader's user can (no Landlock, no view), or None.
    MLSERVER_SIGSTORE_LANDLOCK=off (tests, diagnosis) is asked for, so it is not counted."""
    abi, use_view, line = _effective_landlock()
    if abi or use_view or forced_landlock_abi() == 0:
        return None
    return line


def children_in_view() -> bool:
    """Whether the children confine their reads by the chroot view (Landlock missing, view held)."""
    return _effective_landlock()[1]


def landlock_status() -> str:
    """One line for the log and health details: whether children get Landlock, at which ABI
    (and whether MLSERVER_SIGSTORE_LANDLOCK forced it off or lower), and why not."""
    return _effective_landlock()[2]


def readable_paths() -> list[str]:
    """What a child may read: the interpreter's library directories, the directories of the
    shared libraries it has mapped, and the directories of the packages it has imported."""
    # The interpreter's own library folders, wherever they live (a venv under /tmp included).
    interpreter = {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    found: set[str] = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and ".so" in os.path.basename(fields[5]):
                found.add(os.path.dirname(fields[5].rstrip("\n")))
    for module in list(sys.modules.values()):
        for path in getattr(module, "__path__", None) or ():
            if isinstance(path, str) and os.path.isabs(path):
                found.add(path)
    real = {os.path.realpath(path) for path in interpreter if os.path.isdir(path)}
    real |= {
        path
        for path in (os.path.realpath(p) for p in found if os.path.isdir(p))
        if path != "/" and not any(path == top or path.startswith(top + "/") for top in _NEVER_READABLE)
    }
    # A directory inside another one adds nothing.
    return sorted(p for p in real if not any(p.startswith(q + "/") for q in real))


_inherited_paths: list[str] | None = None


def remember_readable_paths() -> None:
    """Work out `readable_paths()` once, in the fork server: every child forked from it inherits
    the answer instead of spending tens of milliseconds on it before each load."""
    global _inherited_paths
    _inherited_paths = readable_paths()
    _effective_landlock()  # the view's probe too: children inherit its answer


def restrict_filesystem(paths: Iterable[str] | None = None, needed: tuple[str, ...] = ()) -> str:
    """Landlock the calling process: read-only access to `paths` (default: what the fork server
    remembered, else `readable_paths()`),
    nothing else; no TCP bind/connect, no signals or abstract sockets outside the process.
    Without Landlock, the chroot view where it holds (`needed`: folders that must be in it).
    Returns the one-line status; raises if the layer is present but cannot be applied."""
    abi, use_view, status = _effective_landlock()
    if use_view:
        view.enter(view.VIEW_ROOT, needed)
        return status
    if abi == 0:
        return status
    attr = _RulesetAttr(_FS_RIGHTS.get(abi, _FS_RIGHTS_LATEST), _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        if paths is None:
            paths = _inherited_paths if _inherited_paths is not None else readable_paths()
        for path in paths:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(_FS_READ_FILE | _FS_READ_DIR | _FS_EXECUTE, fd)
                _syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return status


# Allowed only with the arguments ruled on below, whatever `allowed` lists.
_BY_ARGUMENT = frozenset({"clone", "open", "openat", "kill", "tgkill", "prlimit64", "ioctl", "fcntl"})


def syscall_filter(default: object, allowed: Iterable[str]) -> seccomp.SyscallFilter:
    """The child's filter with `default` for every syscall not in `allowed` or ruled on below.
    (scripts/record-syscalls.py builds it with a logging default to record what is needed.)"""
    me = os.getpid()
    f = seccomp.SyscallFilter(defaction=default)
    for name in allowed:
        if name not in _BY_ARGUMENT:
            f.add_rule(seccomp.ALLOW, name)
    for name in syscalls.KILL:
        try:
            f.add_rule(seccomp.KILL_PROCESS, name)
        except (RuntimeError, ValueError, OSError):
            pass  # unknown to this libseccomp: the default already denies it
    # glibc falls back from these to older calls on ENOSYS (clone3 -> clone, openat2 -> openat).
    for name in syscalls.ENOSYS:
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), name)
    # Threads only: a clone without CLONE_THREAD (a new process) gets the default.
    f.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, _CLONE_THREAD))
    # Read-only opens; Landlock decides which paths.
    f.add_rule(seccomp.ALLOW, "open", seccomp.Arg(1, seccomp.MASKED_EQ, _WRITE_FLAGS, 0))
    f.add_rule(seccomp.ALLOW, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, _WRITE_FLAGS, 0))
    # Signals only to itself: the loader and its siblings are out of reach.
    for name in ("kill", "tgkill"):
        f.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, me))
    # Reading its own limits; setting any (a root loader could raise them) gets the default.
    f.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0), seccomp.Arg(2, seccomp.EQ, 0))
    for request in syscalls.IOCTLS:
        f.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.EQ, request))
    # fcntl by command: nothing that makes the kernel signal anyone (see _FCNTL_ALLOWED).
    for command in _FCNTL_ALLOWED:
        f.add_rule(seccomp.ALLOW, "fcntl", seccomp.Arg(1, seccomp.EQ, command))
    f.add_rule(seccomp.ALLOW, "fcntl", seccomp.Arg(1, seccomp.EQ, _F_SETFL), seccomp.Arg(2, seccomp.MASKED_EQ, _O_ASYNC, 0))
    return f


def install_syscall_filter() -> None:
    """Load the child's default-deny seccomp filter: the recorded syscalls and the runtime's
    harmless ones (loader/_internal/syscalls.py) succeed, dangerous families kill the child, everything else fails with EPERM."""
    syscall_filter(seccomp.ERRNO(errno.EPERM), syscalls.ALLOWED + syscalls.RUNTIME).load()


def confinement_summary(limits: ChildLimits) -> list[str]:
    """One line per layer the children get, for the start-up log and health details: the kernel
    (Linux or gVisor), what holds and what is missing."""
    allowed = len(set(syscalls.ALLOWED + syscalls.RUNTIME))
    kernel = detect_kernel()
    where = " (applied inside gVisor)" if kernel.gvisor else ""
    return [
        *kernel_lines(kernel, own_seccomp_mode()),
        landlock_status(),
        f"seccomp: default-deny, {allowed} syscalls allowed, {len(syscalls.KILL)} kill the child{where}",
        f"rlimits: {limits.memory_bytes >> 20} MiB address space over the preloaded image, "
        f"{limits.cpu_seconds} s CPU, {limits.max_open_files} files, no new processes",
    ]


def confine(limits: ChildLimits) -> str:
    """Apply rlimits, the filesystem restriction and the syscall filter, in that order; return
    the Landlock status line of what was applied."""
    apply_limits(limits)
    landlock = restrict_filesystem()
    install_syscall_filter()
    return landlock


_DENIED = re.compile(r"PermissionError: \[Errno 13\] Permission denied: '([^']+)'")
_MISSING = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
_NOT_IN_VIEW = re.compile(r"FileNotFoundError: \[Errno 2\] No such file or directory: '(/[^']*)'")
_USER_CODE = (
    "install it into the loader's image, or give its package folder to the loader with "
    "`loader serve --user-code DIR` (read-only, never the model folder), and serve the model "
    "with execution \"sandbox\" or \"auto\""
)


def unpickling_error(error: str, in_view: bool | None = None) -> str:
    """The confined process's error, with what will help when the model's own code could not be
    imported: the path the child may not read (its read-only view of the filesystem) or the
    module the loader lacks, and how to make user code importable. Where the children are in the
    chroot view (`in_view`, default: as this loader runs them), a file outside it is named so."""
    denied = _DENIED.search(error)
    if denied:
        return (
            f"{error}; the confined process reads only the interpreter's libraries and the "
            f"--user-code folders, so it cannot read {denied.group(1)}: if that is the model's own "
            f"code, {_USER_CODE}"
        )
    absent = _NOT_IN_VIEW.search(error)
    if absent and (in_view if in_view is not None else children_in_view()):
        return (
            f"{error}; {absent.group(1)} is outside the confined process's view: without Landlock (e.g. "
            f"under gVisor) it is chrooted into the image's software ({view.VIEW_ROOT}) and finds no models, "
            "trust roots, /etc or /proc there"
        )
    missing = _MISSING.search(error)
    if missing:
        return f"{error}; the model needs the module {missing.group(1)!r}, which the loader does not have: {_USER_CODE}"
    return error
