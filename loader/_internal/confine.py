"""Confinement of the child: rlimits, then Landlock, then a default-deny seccomp filter.

`confine` runs in the child after it has set up its descriptors and before it touches the
artefact. From then on the child can compute, read and write the descriptors it holds, and read
the interpreter's own files; nothing else. Every step fails closed (an exception means the child
refuses to run), except that a kernel without Landlock leaves the filesystem step out, which
`landlock_status` reports so the loader can say so at start.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass

import pyseccomp as seccomp

from loader._internal import syscalls

_CLONE_THREAD = 0x00010000
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


def landlock_status() -> str:
    """One line for the log and health details: whether children get Landlock, and why not."""
    try:
        return f"landlock: ABI {landlock_abi()} enforced"
    except OSError as exc:
        return f"landlock: unavailable ({exc.strerror}); children run with rlimits and seccomp only"


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


def restrict_filesystem(paths: Iterable[str] | None = None) -> str:
    """Landlock the calling process: read-only access to `paths` (default: what the fork server
    remembered, else `readable_paths()`),
    nothing else; no TCP bind/connect, no signals or abstract sockets outside the process.
    Returns the one-line status; raises if Landlock is present but cannot be applied."""
    try:
        abi = landlock_abi()
    except OSError:
        return landlock_status()
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
    return f"landlock: ABI {abi} enforced"


def syscall_filter(default: object, allowed: Iterable[str]) -> seccomp.SyscallFilter:
    """The child's filter with `default` for every syscall not in `allowed` or ruled on below.
    (scripts/record-syscalls.py builds it with a logging default to record what is needed.)"""
    me = os.getpid()
    f = seccomp.SyscallFilter(defaction=default)
    for name in allowed:
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
    return f


def install_syscall_filter() -> None:
    """Load the child's default-deny seccomp filter: the recorded syscalls and the runtime's
    harmless ones (loader/_internal/syscalls.py) succeed, dangerous families kill the child, everything else fails with EPERM."""
    syscall_filter(seccomp.ERRNO(errno.EPERM), syscalls.ALLOWED + syscalls.RUNTIME).load()


def confinement_summary(limits: ChildLimits) -> list[str]:
    """One line per layer the children get, for health details: what holds and what is missing."""
    allowed = len(set(syscalls.ALLOWED + syscalls.RUNTIME))
    return [
        landlock_status(),
        f"seccomp: default-deny, {allowed} syscalls allowed, {len(syscalls.KILL)} kill the child",
        f"rlimits: {limits.memory_bytes >> 20} MiB address space over the preloaded image, "
        f"{limits.cpu_seconds} s CPU, {limits.max_open_files} files, no new processes",
    ]


def confine(limits: ChildLimits) -> None:
    """Apply rlimits, the filesystem restriction and the syscall filter, in that order."""
    apply_limits(limits)
    restrict_filesystem()
    install_syscall_filter()
