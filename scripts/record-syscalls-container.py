"""Record the syscalls the loader container needs, to regenerate runtime/seccomp-loader.json.

    sudo .venv/bin/python scripts/record-syscalls-container.py [--write] [PYTEST ARGS...]

Runs the container tests (by default the loader, adversarial, docker-mode and confinement tiers)
with runtime/seccomp-loader.json temporarily replaced by the same allowlist whose default action
is SCMP_ACT_LOG instead of SCMP_ACT_ERRNO: the kernel logs every syscall the profile would have
refused (audit type 1326 on /dev/kmsg, read while the tests run; this needs root). Rounds repeat,
each allowing what the previous ones logged, until one logs nothing new. The recorded set covers
the loader server (gRPC threads), the fork server, the confined children (Landlock, seccomp),
`docker exec` and runc's last steps before it executes the entrypoint.

NEVER lists syscalls that are not allowed even when logged: the tests make them on purpose
(kernel-surface probes run with `docker exec`), and no loader needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "runtime" / "seccomp-loader.json"
DEFAULT_TESTS = [
    "tests/container/test_loader_container.py",
    "tests/container/test_adversarial.py",
    "tests/container/test_docker_mode.py",
    "tests/container/test_confinement_container.py",
]
NEVER = {
    "acct", "add_key", "adjtimex", "bpf", "chroot", "clock_adjtime", "clock_settime", "delete_module",
    "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "init_module",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load",
    "kexec_load", "keyctl", "lookup_dcookie", "mbind", "migrate_pages", "mount", "move_mount", "move_pages",
    "name_to_handle_at", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "process_madvise", "ptrace", "quotactl", "reboot",
    "request_key", "set_mempolicy", "setns", "settimeofday", "swapoff", "swapon", "syslog", "umount2",
    "unshare", "uselib", "userfaultfd", "vhangup", "pidfd_getfd",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl",
    "shmget", "shmat", "shmdt", "shmctl",
    "getpriority",  # probed by test_the_container_profile_denies_what_was_not_recorded
}
# Ruled on by argument below rather than allowed outright.
ARG_RULED = {"socket", "socketpair", "clone", "clone3"}
# Made by the loader only on paths the container tests do not take (their models are small):
# fallocate preallocates the result memfd of a model of 16 MB or more while the child unpickles.
NOT_REACHED_BY_TESTS = {"fallocate"}
_CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_AF_UNIX = 1


def profile(allowed: set[str], default: str) -> dict:
    """The loader's profile: `allowed`, Unix sockets only, no namespaces, `default` otherwise."""
    names = sorted((allowed | NOT_REACHED_BY_TESTS) - NEVER - ARG_RULED)
    return {
        "comment": (
            "mlserver-sigstore loader: default-deny. The allowlist is recorded by "
            "scripts/record-syscalls-container.py from the loader, its fork server, its confined "
            "children and docker exec; Unix sockets only; clone without namespace flags; "
            "clone3 answers ENOSYS so glibc falls back to clone. Used by compose.yaml and the "
            "runtime's docker mode."
        ),
        "defaultAction": default,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket", "socketpair"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": _AF_UNIX, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": _CLONE_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    }


def allowed_in(path: Path) -> set[str]:
    spec = json.loads(path.read_text())
    if spec.get("defaultAction") == "SCMP_ACT_ALLOW":
        return set()
    return {n for rule in spec["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule for n in rule["names"]}


class KmsgRecorder:
    """Collects, on a thread, the syscalls that hit a SECCOMP_RET_LOG action."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()
        self._fd = os.open("/dev/kmsg", os.O_RDONLY)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                record = os.read(self._fd, 8192).decode(errors="replace")
            except OSError:
                continue  # EPIPE: records were overwritten before we read them
            if "type=1326" in record and "code=0x7ffc0000" in record:
                match = re.search(r"arch=([0-9a-f]+) syscall=(\d+)", record)
                if match:
                    self.seen.add((int(match[1], 16), int(match[2])))

    def names(self) -> set[str]:
        import pyseccomp as seccomp

        self._stop = True
        names = set()
        for arch, number in self.seen:
            try:
                names.add(seccomp.resolve_syscall(arch, number).decode())
            except ValueError:
                print(f"  logged syscall {number} has no name (a probe such as syscall 999); not allowed", file=sys.stderr)
        return names


def _set(path: str, value: str) -> str:
    old = Path(path).read_text().strip()
    Path(path).write_text(value)
    return old


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the default-deny profile")
    parser.add_argument("--rounds", type=int, default=4)
    args, pytest_args = parser.parse_known_args()
    if os.geteuid() != 0:
        print("FAIL: reading the kernel log (/dev/kmsg) needs root", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from loader._internal import syscalls

    original = PROFILE.read_text()
    known = allowed_in(PROFILE) | set(syscalls.ALLOWED) | set(syscalls.RUNTIME)
    # Without this the kernel prints 10 audit records per 5 s and drops the rest.
    burst = _set("/proc/sys/kernel/printk_ratelimit_burst", "1000000")
    try:
        for number in range(1, args.rounds + 1):
            PROFILE.write_text(json.dumps(profile(known, "SCMP_ACT_LOG"), indent=2) + "\n")
            recorder = KmsgRecorder()
            subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(pytest_args or DEFAULT_TESTS)],
                cwd=ROOT, check=False,
            )
            new = recorder.names() - known
            print(f"round {number}: {len(new)} new: {sorted(new)}", file=sys.stderr)
            known |= new - NEVER
            if not new - NEVER:
                break
    finally:
        _set("/proc/sys/kernel/printk_ratelimit_burst", burst)
        PROFILE.write_text(original)
    if args.write:
        PROFILE.write_text(json.dumps(profile(known, "SCMP_ACT_ERRNO"), indent=2) + "\n")
        print(f"wrote {len(known - NEVER - ARG_RULED)} allowed names to {PROFILE.relative_to(ROOT)}", file=sys.stderr)
    else:
        print(json.dumps(sorted(known - NEVER)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
