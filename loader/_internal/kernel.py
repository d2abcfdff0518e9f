"""Which kernel the loader's syscalls reach (Linux, or gVisor's user-space kernel), and whether a
seccomp filter was already on the loader when it started (the container's profile).

Reported in the start-up log and `loader health --details`: under gVisor the confined children
talk to gVisor's Sentry, which implements seccomp but not Landlock, and a container's seccomp
profile is applied inside the sandbox only with runsc's --oci-seccomp. gVisor's platform
(ptrace, KVM) is not visible from inside the sandbox.
"""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from pathlib import Path

# gVisor's fixed /proc/version (it reports Linux 4.4.0 whatever the host runs).
_GVISOR_VERSION = "#1 SMP Sun Jan 10 15:06:54 PST 2016"
_SYSLOG_ACTION_READ_ALL = 3
_KERNEL_LOG_BYTES = 16 << 10


@dataclass(frozen=True)
class Kernel:
    """What the loader can know about the kernel under it."""

    gvisor: bool
    release: str
    evidence: str  # how gVisor was recognised ("" on Linux)


def _kernel_log() -> str:
    """The kernel log as this process may read it ("" where syslog(2) is refused)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(_KERNEL_LOG_BYTES)
        n = libc.klogctl(_SYSLOG_ACTION_READ_ALL, buf, _KERNEL_LOG_BYTES)
    except (OSError, AttributeError):
        return ""
    return buf.raw[: max(n, 0)].decode(errors="replace")


def detect(proc_version: Path = Path("/proc/version"), kernel_log: str | None = None) -> Kernel:
    """gVisor if its kernel log says so (it starts with "Starting gVisor...") or /proc/version
    is gVisor's fixed one; Linux otherwise."""
    release = platform.release()
    log = _kernel_log() if kernel_log is None else kernel_log
    if "Starting gVisor" in log:
        return Kernel(True, release, "its kernel log")
    try:
        version = proc_version.read_text()
    except OSError:
        version = ""
    if _GVISOR_VERSION in version:
        return Kernel(True, release, "its /proc/version")
    return Kernel(False, release, "")


def own_seccomp_mode(status: Path = Path("/proc/self/status")) -> int | None:
    """The calling process's seccomp mode (0 none, 2 filter); None if it cannot be read."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kernel_lines(kernel: Kernel, loader_seccomp: int | None) -> list[str]:
    """The layers the kernel adds or takes away, one line each, for the log and health details.
    `loader_seccomp` is the loader's seccomp mode at start, before any child filter."""
    if kernel.gvisor:
        lines = [
            f"kernel: gVisor (recognised by {kernel.evidence}; reports Linux {kernel.release}): the loader's and "
            "the children's syscalls reach gVisor's user-space kernel, not the host's; its platform "
            "(ptrace or KVM) is not visible from inside the sandbox",
            "landlock under gVisor: not implemented by gVisor; the landlock line says what holds the "
            "children's reads instead",
        ]
    else:
        lines = [f"kernel: Linux {kernel.release} (no gVisor)"]
    if loader_seccomp == 2:
        where = " (inside gVisor: runsc --oci-seccomp)" if kernel.gvisor else ""
        lines.append(f"container seccomp profile: in force on the loader{where}")
    elif kernel.gvisor:
        lines.append(
            "container seccomp profile: none on the loader (runsc applies one only with --oci-seccomp); "
            "gVisor's Sentry runs under its own host seccomp filter"
        )
    else:
        lines.append("container seccomp profile: none on the loader (run it with runtime/seccomp-loader.json)")
    return lines
