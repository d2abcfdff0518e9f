"""Signed-but-hostile artefacts through the real container path and SigstoreModel.

Each payload is signed with the accepted identity, so the signature gate passes and the
sandbox (loader container + confined child) or the serving side's validation is what holds.
For each: the load is refused with a clear reason, nothing changes outside the sandbox, the
loader stays healthy, and the next good load succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import skops.io
from sklearn.tree import DecisionTreeClassifier

from runtime.errors import ModelRefused
from tests import hostile
from tests.container.conftest import CANARY, LoaderContainer
from tests.support import Authority, wait_for_health

# Writes aimed at every writable-looking place the sandbox could reach.
TOUCH = "touch /pwnd /tmp/pwnd /models/pwnd /run/loader/pwnd; env > /run/loader/pwnd.txt"


def _crafted_tree() -> bytes:
    model = DecisionTreeClassifier(random_state=0).fit([[0.0], [1.0], [2.0], [3.0]], [0, 1, 0, 1])
    state = model.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = 10**6
    state["nodes"] = nodes
    model.tree_.__setstate__(state)
    return skops.io.dumps(model)


def _skops_zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", "{}")
        archive.writestr("bomb.npy", b"\0" * (256 << 20))
    return buffer.getvalue()


# name -> (payload, words: any of these must appear in the refusal)
CASES: dict[str, tuple[Callable[[], bytes], tuple[str, ...]]] = {
    "reduce-os-system": (lambda: hostile.os_system(TOUCH), ("not a scikit-learn estimator",)),
    "reduce-exec": (lambda: hostile.run_python(f"import os; os.system({TOUCH!r})"), ("not a scikit-learn estimator",)),
    "reduce-eval": (lambda: hostile.run_python(f"eval(\"__import__('os').system({TOUCH!r})\")"), ("not a scikit-learn estimator",)),
    "reduce-subprocess": (lambda: hostile.run_python(f"import subprocess; subprocess.run({TOUCH!r}, shell=True)"), ("Operation not permitted",)),
    "reduce-runpy": (lambda: hostile.run_python("import runpy, sys; sys.argv = ['http.server', '8000']; runpy.run_module('http.server', run_name='__main__', alter_sys=True)"), ("Operation not permitted", "Address family not supported")),
    "importlib-getattr-chain": (lambda: hostile.import_chain(TOUCH), ("not a scikit-learn estimator",)),
    "build-patches-skops-writer": (hostile.patch_skops_writer, ("not a skops archive", "BadZipFile", "File is not a zip file")),
    "object-array-nested-pickle": (lambda: hostile.object_array(TOUCH), ("Operation not permitted",)),
    "joblib-zlib": (lambda: hostile.compressed("zlib", TOUCH), ("Operation not permitted",)),
    "joblib-gzip": (lambda: hostile.compressed("gzip", TOUCH), ("Operation not permitted",)),
    "joblib-lzma": (lambda: hostile.compressed("lzma", TOUCH), ("Operation not permitted",)),
    "joblib-bz2": (lambda: hostile.compressed("bz2", TOUCH), ("Operation not permitted",)),
    "torch-style-zip": (lambda: hostile.torch_style_zip(TOUCH), ("unpickling the verified artefact failed",)),
    "pip-install": (lambda: hostile.run_python("import runpy, sys; sys.argv = ['pip', 'install', 'requests']; runpy.run_module('pip', run_name='__main__')"), ("pip", "Operation not permitted", "No module named")),
    "socket-unix": (lambda: hostile.run_python("import socket; socket.socket(socket.AF_UNIX).connect('/run/loader/loader.sock')"), ("Operation not permitted",)),
    "socket-inet": (lambda: hostile.run_python("import socket; socket.create_connection(('10.0.0.1', 80), timeout=1)"), ("Operation not permitted",)),
    "read-parent-environ": (lambda: hostile.run_python("raise RuntimeError(open('/proc/1/environ').read())"), ("Permission denied",)),
    "read-own-environ": (lambda: hostile.run_python("raise RuntimeError('ENV ' + open('/proc/self/environ').read())"), ("Permission denied", "ENV")),
    "write-rootfs": (lambda: hostile.run_python("open('/pwnd', 'w')"), ("Operation not permitted",)),
    "write-model-mount": (lambda: hostile.run_python("open('/models/pwnd', 'w')"), ("Operation not permitted",)),
    "write-socket-volume": (lambda: hostile.run_python("open('/run/loader/pwnd', 'w')"), ("Operation not permitted",)),
    "replace-socket": (lambda: hostile.run_python("import os; os.rename('/run/loader/loader.sock', '/run/loader/old')"), ("Operation not permitted",)),
    "fill-scratch": (lambda: hostile.run_python("f = open('/tmp/fill', 'wb')\nwhile True: f.write(b'0' * 2**20)"), ("Operation not permitted",)),
    "fork-bomb": (lambda: hostile.run_python("import os\nwhile True: os.fork()"), ("Operation not permitted",)),
    "memory-bomb": (lambda: hostile.run_python("x = []\nwhile True: x.append(bytearray(10**7))"), ("memory limit",)),
    "billion-laughs": (hostile.billion_laughs, ("CPU-time limit", "memory limit", "wall-time limit", "RecursionError", "SystemError")),
    "deep-nesting": (hostile.deep_nesting, ("RecursionError", "maximum recursion depth")),
    "cpu-loop": (lambda: hostile.run_python("while True: pass"), ("CPU-time limit",)),
    "sleep": (lambda: hostile.run_python("import time; time.sleep(3600)"), ("wall-time limit",)),
    "stdout-flood": (lambda: hostile.run_python("import sys\nfor _ in range(200000): print('x' * 1000)\nraise RuntimeError('flooded')"), ("flooded",)),
    "ptrace-parent": (lambda: hostile.run_python("import ctypes, os\nr = ctypes.CDLL(None, use_errno=True).ptrace(16, os.getppid(), 0, 0)\nraise OSError(ctypes.get_errno(), 'ptrace returned ' + str(r))"), ("ptrace returned -1", "Operation not permitted")),
    "kill-parent": (lambda: hostile.run_python("import os; os.kill(os.getppid(), 9)"), ("Operation not permitted",)),
    "io_uring_setup": (lambda: hostile.syscall(425, "io_uring_setup"), ("io_uring_setup returned -1",)),
    "userfaultfd": (lambda: hostile.syscall(323, "userfaultfd"), ("userfaultfd returned -1",)),
    "bpf": (lambda: hostile.syscall(321, "bpf"), ("bpf returned -1",)),
    "perf_event_open": (lambda: hostile.syscall(298, "perf_event_open"), ("perf_event_open returned -1",)),
    "keyctl": (lambda: hostile.syscall(250, "keyctl"), ("keyctl returned -1",)),
    "unshare": (lambda: hostile.syscall(272, "unshare"), ("unshare returned -1",)),
    "forged-crafted-tree": (lambda: hostile.forged_result(_crafted_tree()), ("out-of-range left child",)),
    "forged-zip-bomb": (lambda: hostile.forged_result(_skops_zip_bomb()), ("zip bomb",)),
    "forged-pickle-instead-of-skops": (lambda: hostile.forged_result(hostile.os_system(TOUCH)), ("not a skops archive",)),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for p in sorted(folder.rglob("*"))}


@pytest.fixture(autouse=True)
def _relative_paths(monkeypatch: pytest.MonkeyPatch, loader_container: LoaderContainer) -> None:
    monkeypatch.setenv("MLSERVER_SIGSTORE_ARTEFACTS_ROOT", str(loader_container.models))


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_artefact(loader_container: LoaderContainer, authority: Authority, digits_svm_bytes: bytes, case: str) -> None:
    payload, words = CASES[case]
    model = loader_container.model(f"adv-{case}", payload(), authority)
    models_before = _snapshot(loader_container.models)
    socket_before = sorted(p.name for p in loader_container.socket_dir.iterdir())

    with pytest.raises(ModelRefused) as exc:
        asyncio.run(model.load())
    message = str(exc.value)
    assert 400 <= exc.value.status_code < 500, message
    assert any(w in message for w in words), message
    assert CANARY not in message

    # Nothing changed outside the sandbox.
    assert _snapshot(loader_container.models) == models_before
    assert sorted(p.name for p in loader_container.socket_dir.iterdir()) == socket_before == ["loader.sock"]
    code, out = loader_container.exec_python("import os; print(sorted(os.listdir('/tmp')), os.path.exists('/pwnd'))")
    assert out.split("]")[0].count("pwnd") == 0 and out.strip().endswith("False"), out
    # The log stays small whatever the payload printed.
    assert len(loader_container.container.logs()) < 1 << 20

    # The loader is healthy and the next good load works.
    loader_container.container.reload()
    assert loader_container.container.status == "running"
    wait_for_health(loader_container.endpoint, timeout=10)
    good = loader_container.model("adv-good-after", digits_svm_bytes, authority)
    assert asyncio.run(good.load())
