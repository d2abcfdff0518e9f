"""The confined child's syscall policy, as data (used by loader/_internal/confine.py).

ALLOWED is recorded, not written by hand: scripts/record-syscalls.py runs the real child flow on
the model corpus (tests/model_corpus.py) under a filter that logs instead of denying, and prints
a new ALLOWED. Regenerate it when Python, numpy, scikit-learn, joblib or skops change:

    sudo .venv/bin/python scripts/record-syscalls.py child --write

clone, open/openat, kill/tgkill, prlimit64, ioctl and fcntl are ruled on by argument in
confine.py and are not listed here (confine.py ignores them if a recording lists them).
"""

# Recorded by scripts/record-syscalls.py (child).
ALLOWED: tuple[str, ...] = (
    "brk",
    "close",
    "exit_group",
    "getrandom",
    "lseek",
    "madvise",
    "mmap",
    "mremap",
    "munmap",
    "newfstatat",
    "read",
    "recvmsg",
    "write",
)

# Not reached by the corpus, but made by the interpreter's own paths that a payload may take
# legitimately (waiting, signals, time, threads, reading held descriptors) and harmless: none
# of them opens, creates or reaches anything.
RUNTIME: tuple[str, ...] = (
    "futex", "clock_nanosleep", "nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
    "sched_yield", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "restart_syscall", "getpid", "gettid", "exit", "set_robust_list", "rseq", "mprotect",
    "fstat", "pread64", "readv", "writev", "poll", "ppoll", "epoll_wait", "epoll_pwait",
    "recvfrom", "getdents64", "getcwd", "getuid", "geteuid", "getgid", "getegid", "getppid",
    "getpgrp", "uname", "sysinfo", "sched_getaffinity", "getrusage", "times",
)

# Kernel surface no model needs, that only an attack would touch: the child is killed (SIGSYS)
# rather than given an error it could probe with.
KILL: tuple[str, ...] = (
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "iopl", "ioperm", "syslog", "acct", "quotactl", "lookup_dcookie",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "name_to_handle_at", "open_by_handle_at",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl",
    "shmget", "shmat", "shmdt", "shmctl",
    "fanotify_init", "uselib", "vhangup",
)

# glibc falls back to an older call when these return ENOSYS.
ENOSYS: tuple[str, ...] = ("clone3", "openat2")

# ioctl requests the child may make (isatty, terminal size, close-on-exec, non-blocking,
# bytes readable).
IOCTLS: tuple[int, ...] = (0x5401, 0x5413, 0x5450, 0x5451, 0x5421, 0x541B)
