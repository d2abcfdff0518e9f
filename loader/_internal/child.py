"""The confined child: the only code that ever unpickles an artefact.

It runs in a process forked from the fork server, which has imported `preload` (scikit-learn,
skops, ...) already; this module itself stays light so that the gRPC server can reference
`run` without importing any of that.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import pyseccomp as seccomp

_CLONE_THREAD = 0x00010000
_O_WRONLY, _O_RDWR, _O_CREAT = 0o1, 0o2, 0o100


@dataclass(frozen=True)
class ChildLimits:
    """What the child applies to itself (rlimits) before it touches the artefact."""

    memory_bytes: int = 1 << 30
    cpu_seconds: int = 30
    max_open_files: int = 64
    max_result_bytes: int = 1 << 30


class PassedFd:
    """A file descriptor handed to a fork-server child (duplicated over the server's socket)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return PassedFd._rebuild, (reduction.DupFd(self.fd),)

    @staticmethod
    def _rebuild(dup: Any) -> PassedFd:  # a multiprocessing DupFd, rebuilt in the child
        return PassedFd(dup.detach())


# Syscalls a deserialized model never needs. Denied with EPERM so the payload sees an error
# and the child reports it, rather than dying without a word.
_DENIED = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "execve", "execveat", "fork", "vfork",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "userfaultfd", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "creat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
    "rmdir", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "chown", "fchown", "lchown", "fchownat", "truncate", "ftruncate", "mknod", "mknodat",
    "memfd_create", "utimensat", "utimes", "futimesat", "setxattr", "fsetxattr", "lsetxattr",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "personality", "setrlimit", "prlimit64", "setpriority", "sched_setaffinity",
)


def _install_filter() -> None:
    me = os.getpid()
    deny = seccomp.ERRNO(errno.EPERM)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in _DENIED:
        f.add_rule(deny, name)
    # glibc falls back from clone3 to clone on ENOSYS; clone is allowed for threads only.
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")
    f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    for flag in (_O_WRONLY, _O_RDWR, _O_CREAT):
        f.add_rule(deny, "open", seccomp.Arg(1, seccomp.MASKED_EQ, flag, flag))
        f.add_rule(deny, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
    # Signals only to itself: the loader and its siblings are out of reach.
    for name in ("kill", "tkill", "tgkill"):
        f.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, me))
    f.load()


def _apply_limits(limits: ChildLimits) -> None:
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


def _convert(artefact: PassedFd, result: PassedFd) -> tuple[int, list[str], dict[str, float]]:
    # Already imported by the fork server (preload), so these cost nothing here.
    import joblib
    import sklearn.base
    import skops.io

    started = time.perf_counter()
    with os.fdopen(artefact.fd, "rb") as source:
        source.seek(0)  # the parent's writes left the shared offset at the end
        model = joblib.load(source)
    unpickled = time.perf_counter()
    if not isinstance(model, sklearn.base.BaseEstimator):
        raise TypeError(
            f"the artefact holds a {type(model).__module__}.{type(model).__qualname__}, "
            "not a scikit-learn estimator"
        )
    sink = os.fdopen(result.fd, "w+b")
    skops.io.dump(model, sink)
    sink.flush()
    size = sink.tell()
    sink.seek(0)
    untrusted = skops.io.get_untrusted_types(data=sink.read())
    done = time.perf_counter()
    return size, untrusted, {"unpickle": unpickled - started, "convert": done - unpickled}


def run(artefact: PassedFd, result: PassedFd, status: Connection, output: Connection, limits: ChildLimits) -> None:
    """Child entry point: confine, unpickle the sealed artefact, write skops to `result`, exit."""
    try:
        # Whatever the payload prints goes to a pipe the parent reads with a cap.
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        os.chdir("/")
        # Relative sys.path entries ('' is the working directory) would resolve against "/".
        sys.path[:] = [entry for entry in sys.path if os.path.isabs(entry)]
        os.environ.clear()
        _apply_limits(limits)
        _install_filter()
    except Exception as exc:  # noqa: BLE001 - report any confinement failure, never run unconfined
        status.send_bytes(json.dumps({"ok": False, "error": f"could not confine the child: {exc}"}).encode())
        os._exit(3)
    try:
        size, untrusted, timings = _convert(artefact, result)
    except MemoryError:
        status.send_bytes(json.dumps({"ok": False, "limit": "memory"}).encode())
        os._exit(4)
    except BaseException as exc:  # noqa: BLE001 - hostile payloads raise anything
        message = f"{type(exc).__name__}: {exc}"[:2000]
        status.send_bytes(json.dumps({"ok": False, "error": message}).encode())
        os._exit(5)
    status.send_bytes(json.dumps({"ok": True, "untrusted_types": untrusted, "size": size, "timings": timings}).encode())
    sys.stdout.flush()
    os._exit(0)
