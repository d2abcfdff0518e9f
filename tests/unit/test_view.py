"""The children's chroot view (loader/_internal/view.py), entered for real in a forked process."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

from loader._internal import view
from tests.support import ROOT


def _tree(root: Path) -> Path:
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "library.txt").write_text("software")
    marker = root / str(root).lstrip("/")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.symlink_to("/")
    return root


# Run in a fresh single-threaded interpreter (one BLAS thread, as the loader's children have), not
# forked from pytest, whose fork handlers may start threads in a child: a threaded process cannot unshare.
_IN_VIEW = """
import json, os, sys
from pathlib import Path
from loader._internal import view
from tests.support import ROOT
root, secret, needed = sys.argv[1], sys.argv[2], tuple(json.loads(sys.argv[3]))
seen = {}
try:
    sys.path.append(root + "/usr/lib")  # a folder given under the root, as user code is
    view.enter(root, needed)
    seen["sys_path_end"] = sys.path[-1]
    reads = (
        ("secret", secret), ("passwd", "/etc/passwd"), ("proc", "/proc/self/status"),
        ("library", "/usr/lib/library.txt"), ("resolved", root + "/usr/lib/library.txt"),
    )
    for name, path in reads:
        try:
            seen[name] = Path(path).read_bytes()[:20].decode(errors="replace")
        except OSError as exc:
            seen[name] = exc.errno
    seen["chroot_again"] = 0 if os.chroot("/usr") is None else -1
except PermissionError as exc:
    seen["chroot_again"] = exc.errno
except (OSError, ValueError) as exc:
    seen["error"] = str(exc)
print(json.dumps(seen))
"""


_ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _in_view(root: Path, secret: Path, needed: tuple[str, ...] = ()) -> dict[str, object]:
    """Enter the view at `root` in a fresh process; what it can still do."""
    done = subprocess.run(
        [sys.executable, "-c", _IN_VIEW, str(root), str(secret), json.dumps(needed)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=_ONE_THREAD,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_a_process_in_the_view_reads_only_the_tree_and_cannot_leave_it(tmp_path: Path) -> None:
    secret = tmp_path / "models" / "tenant-b.joblib"
    secret.parent.mkdir()
    secret.write_text("TENANT-B")
    # Control: the same process, before entering the view, reads the secret and /etc/passwd.
    assert secret.read_text() == "TENANT-B" and Path("/etc/passwd").read_bytes()
    root = _tree(tmp_path / "sandbox")
    seen = _in_view(root, secret)
    assert "error" not in seen, seen
    assert seen["secret"] == errno.ENOENT and seen["passwd"] == errno.ENOENT and seen["proc"] == errno.ENOENT, seen
    assert seen["library"] == "software" and seen["resolved"] == "software", seen
    assert seen["sys_path_end"] == "/usr/lib"
    # Every capability the user namespace gave is gone: no second chroot to climb out with.
    assert seen["chroot_again"] == errno.EPERM


def test_a_folder_outside_the_view_is_refused_before_anything_is_entered(tmp_path: Path) -> None:
    root = _tree(tmp_path / "sandbox")
    outside = tmp_path / "user-code"
    outside.mkdir()
    seen = _in_view(root, outside, needed=(str(outside),))
    assert "outside the children's view" in str(seen.get("error")) and "mount it under" in str(seen["error"])
    inside = root / "usr" / "lib"
    assert "error" not in _in_view(root, outside, needed=(str(inside),))


def test_the_probe_says_why_a_view_cannot_be_entered(tmp_path: Path) -> None:
    assert "is missing" in str(view.probe(str(tmp_path)))
    code = "import sys; from loader._internal import view; print(view.probe(sys.argv[1], folders=[], files=[]))"
    done = subprocess.run([sys.executable, "-c", code, str(_tree(tmp_path / "sandbox"))], capture_output=True, text=True, timeout=120, cwd=ROOT, env=_ONE_THREAD)
    assert done.stdout.strip() == "None", done.stdout + done.stderr[-2000:]  # (a fresh process: see _IN_VIEW)


def test_a_folder_given_under_the_root_is_named_from_inside() -> None:
    assert view.seen_from_inside("/sandbox/user-code") == "/user-code"
    assert view.seen_from_inside("/sandboxed/x") == "/sandboxed/x" and view.seen_from_inside("/opt/x") == "/opt/x"


def test_a_tree_out_of_step_with_the_software_is_found(tmp_path: Path) -> None:
    """An image built on the loader's that pip-installs into /opt changes the software at / only:
    the copy the children would read is then found to differ (added entry, replaced file)."""
    software = tmp_path / "opt" / "site"
    software.mkdir(parents=True)
    (software / "pkg.py").write_text("v1")
    root = tmp_path / "sandbox"
    copy = root / str(software).lstrip("/")
    copy.mkdir(parents=True)
    os.link(software / "pkg.py", copy / "pkg.py")
    folders, files = [str(software)], [str(software / "pkg.py")]
    assert view.out_of_step(str(root), folders, files) is None
    (software / "pkg.py").unlink()
    (software / "pkg.py").write_text("v2")  # upgraded: a new file at /, the old one in the copy
    assert "is not the file at" in str(view.out_of_step(str(root), folders, files))
    (software / "new-1.0.dist-info").mkdir()
    assert "differ (new-1.0.dist-info)" in str(view.out_of_step(str(root), folders, files))
