"""Record the syscalls the confined child needs, to regenerate loader/_internal/syscalls.py.

    sudo .venv/bin/python scripts/record-syscalls.py child [--large-mb 200] [--write]

Runs the real child flow (a Sandbox: fork server, Landlock, then the child's filter) on the model
corpus (tests/model_corpus.py, plus one large model) with the filter's default action switched
from EPERM to LOG: the kernel logs each syscall that would have been denied (audit type 1326 on
/dev/kmsg, which needs root). Rounds repeat, each allowing what the previous ones saw, until a
round logs nothing new, so kernel log rate limits cannot hide a syscall. Landlock denials (audit
type 1423) are printed too: each is a file the child tried to open and could not.

For the container profile (runtime/seccomp-loader.json) use scripts/record-syscalls-container.py.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYSCALLS_PY = ROOT / "loader" / "_internal" / "syscalls.py"
_ENV = "RECORD_SYSCALLS_ALLOWED"


def _install_recording_filter() -> None:
    """In the fork server (this file is preloaded as __mp_main__): children log, not deny."""
    import pyseccomp as seccomp

    from loader._internal import confine

    allowed = [name for name in os.environ[_ENV].split(",") if name]
    confine.install_syscall_filter = lambda: confine.syscall_filter(seccomp.LOG, allowed).load()


if __name__ == "__mp_main__" and _ENV in os.environ:
    _install_recording_filter()


class KernelLog:
    """New records on /dev/kmsg since this object was made."""

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self._fd, 0, os.SEEK_END)

    def read(self) -> list[str]:
        records = []
        while True:
            try:
                records.append(os.read(self._fd, 8192).decode(errors="replace"))
            except BlockingIOError:
                return records
            except OSError as exc:
                if exc.errno != errno.EPIPE:  # EPIPE: records were overwritten; keep reading
                    raise


def seccomp_logged(records: list[str]) -> set[str]:
    """Names of the syscalls that hit a SECCOMP_RET_LOG default in these kernel log records."""
    import pyseccomp as seccomp

    names = set()
    for record in records:
        if "type=1326" in record and "code=0x7ffc0000" in record:
            match = re.search(r"arch=([0-9a-f]+) syscall=(\d+)", record)
            if match:
                names.add(seccomp.resolve_syscall(int(match[1], 16), int(match[2])).decode())
    return names


def landlock_denials(records: list[str]) -> list[str]:
    return sorted({r.split(";", 1)[-1].strip() for r in records if "type=1423" in r})


def _artefact(data: bytes) -> Any:
    """What Sandbox.convert takes: a sealed memfd (or the bytes, for an older Sandbox)."""
    try:
        from loader._internal.memfd import new_memfd, seal
    except ImportError:
        return data
    fd = new_memfd("corpus-model")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return seal(fd)


def _round(corpus_dir: Path) -> None:
    """One recording round in this process; prints JSON {"logged": [...], "failed": {...}}."""
    from loader._internal.sandbox import FORKSERVER_PRELOAD, Sandbox, SandboxLimits

    sandbox = Sandbox(SandboxLimits(memory_bytes=4 << 30, wall_seconds=600, cpu_seconds=600, max_result_bytes=2 << 30))
    multiprocessing.get_context("forkserver").set_forkserver_preload([*FORKSERVER_PRELOAD, "__main__"])
    sandbox.warm_up()
    log = KernelLog()
    failed = {}
    for path in sorted(corpus_dir.iterdir()):
        try:
            sandbox.convert(_artefact(path.read_bytes()))
        except Exception as exc:  # noqa: BLE001 - report every failure
            failed[path.name] = f"{type(exc).__name__}: {exc}"
    sandbox.close()
    time.sleep(1)  # kauditd prints asynchronously
    records = log.read()
    print(json.dumps({"logged": sorted(seccomp_logged(records)), "landlock": landlock_denials(records), "failed": failed}))


def _write_allowed(names: set[str]) -> None:
    text = SYSCALLS_PY.read_text()
    body = "".join(f'    "{name}",\n' for name in sorted(names))
    new = re.sub(r"ALLOWED: tuple\[str, \.\.\.\] = \([^)]*\)", f"ALLOWED: tuple[str, ...] = (\n{body})", text, count=1)
    SYSCALLS_PY.write_text(new)


def record_child(large_mb: int, write: bool, rounds: int) -> int:
    sys.path.insert(0, str(ROOT))
    from loader._internal import syscalls
    from tests.model_corpus import corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = Path(tmp)
        for name, data in corpus(large_mb).items():
            (corpus_dir / name).write_bytes(data)
        allowed = set(syscalls.ALLOWED)
        seen: set[str] = set()
        for number in range(1, rounds + 1):
            env = {**os.environ, _ENV: ",".join(sorted(allowed | seen)), "PYTHONPATH": str(ROOT)}
            out = subprocess.run(
                [sys.executable, __file__, "_round", str(corpus_dir)], env=env, capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            new = set(result["logged"]) - seen - allowed
            print(f"round {number}: {len(new)} new: {sorted(new)}", file=sys.stderr)
            for line in result["landlock"]:
                print(f"  landlock denied: {line}", file=sys.stderr)
            for name, error in result["failed"].items():
                print(f"  {name} failed: {error}", file=sys.stderr)
            seen |= new
            if not new:
                break
        else:
            print("still finding new syscalls; run again", file=sys.stderr)
    needed = (allowed | seen) if not write else seen | allowed
    print(json.dumps(sorted(needed)))
    if write:
        _write_allowed(needed)
        print(f"wrote {len(needed)} names to {SYSCALLS_PY.relative_to(ROOT)}", file=sys.stderr)
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "_round":
        _round(Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["child"])
    parser.add_argument("--large-mb", type=int, default=200, help="size of the large model (0: none)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="rewrite ALLOWED in loader/_internal/syscalls.py")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("FAIL: reading the kernel log (/dev/kmsg) needs root", file=sys.stderr)
        return 2
    return record_child(args.large_mb, args.write, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
