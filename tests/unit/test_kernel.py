"""What the loader says about the kernel under it: Linux, or gVisor (issue 29)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loader._internal.kernel import Kernel, detect, kernel_lines, own_seccomp_mode
from tests.support import ROOT

GVISOR_PROC_VERSION = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016\n"
GVISOR_LOG = "[    0.000000] Starting gVisor...\n[    0.512600] Mounting deweydecimalfs...\n"


def test_gvisor_is_recognised_by_its_kernel_log(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text("Linux version 6.1.0 (debian) #1 SMP\n")
    kernel = detect(version, kernel_log=GVISOR_LOG)
    assert kernel.gvisor and kernel.evidence == "its kernel log"


def test_gvisor_is_recognised_by_its_proc_version_where_the_log_is_refused(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text(GVISOR_PROC_VERSION)
    kernel = detect(version, kernel_log="")
    assert kernel.gvisor and kernel.evidence == "its /proc/version"


def test_linux_is_not_taken_for_gvisor(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text("Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\n")
    assert not detect(version, kernel_log="[    0.000000] Linux version 6.1.0\n").gvisor


def test_the_lines_under_gvisor_name_it_and_what_is_missing() -> None:
    lines = "\n".join(kernel_lines(Kernel(True, "4.4.0", "its kernel log"), loader_seccomp=0))
    assert "kernel: gVisor" in lines and "not visible from inside" in lines
    assert "landlock under gVisor: not implemented" in lines
    assert "--oci-seccomp" in lines


def test_the_lines_on_linux_say_whether_the_container_profile_holds() -> None:
    assert kernel_lines(Kernel(False, "6.1.0", ""), loader_seccomp=2) == [
        "kernel: Linux 6.1.0 (no gVisor)",
        "container seccomp profile: in force on the loader",
    ]


def test_own_seccomp_mode_reads_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nSeccomp:\t2\nSeccomp_filters:\t1\n")
    assert own_seccomp_mode(status) == 2
    assert own_seccomp_mode(tmp_path / "missing") is None


def test_the_container_profile_inside_gvisor_is_named_so() -> None:
    lines = kernel_lines(Kernel(True, "4.4.0", "its kernel log"), loader_seccomp=2)
    assert lines[-1] == "container seccomp profile: in force on the loader (inside gVisor: runsc --oci-seccomp)"


def test_the_gvisor_profile_is_the_loader_profile_but_for_clone3_and_the_view() -> None:
    """runtime/seccomp-loader-gvisor.json is generated from seccomp-loader.json: never stale; it
    adds only unshare (CLONE_NEWUSER alone) and chroot, for the children's view."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gvisor-seccomp.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    def allowed(path: str) -> dict[str, list[object]]:
        rules = json.loads((ROOT / "runtime" / path).read_text())["syscalls"]
        return {n: r.get("args", []) for r in rules if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}

    extra = set(allowed("seccomp-loader-gvisor.json")) - set(allowed("seccomp-loader.json"))
    assert extra == {"unshare", "chroot", "clone3"}
    assert allowed("seccomp-loader-gvisor.json")["unshare"] == [{"index": 0, "value": 0x10000000, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
