"""The loader image under compose's hardening: gate, containment, and what the sandbox sees."""

from __future__ import annotations

import io

import grpc
import joblib
import pytest
import skops.io
from sklearn import datasets

from loader.proto.v1 import loader_pb2, loader_pb2_grpc
from tests import hostile
from tests.container.conftest import LoaderContainer
from tests.support import SIGNER, Authority

DIGITS = datasets.load_digits()
X = DIGITS.images.reshape((len(DIGITS.images), -1))


def call(lc: LoaderContainer, artefact: str, authority: Authority) -> tuple[loader_pb2.LoadedModel, bytes]:
    request = loader_pb2.VerifyAndLoadRequest(
        artefact=artefact, signers=[loader_pb2.Signer(identity=SIGNER, issuer=authority.issuer)]
    )
    with grpc.insecure_channel(lc.endpoint) as channel:
        responses = loader_pb2_grpc.LoaderStub(channel).VerifyAndLoad(request, timeout=60)
        return next(responses).header, b"".join(r.chunk for r in responses)


def test_the_good_model_loads_through_the_container(loader_container: LoaderContainer, authority: Authority, digits_svm_bytes: bytes) -> None:
    header, data = call(loader_container, loader_container.put("good", digits_svm_bytes, authority), authority)
    original = joblib.load(io.BytesIO(digits_svm_bytes))
    assert (skops.io.loads(data, trusted=[]).predict(X) == original.predict(X)).all()
    assert header.facts.identity == SIGNER


def test_a_tampered_model_is_refused(loader_container: LoaderContainer, authority: Authority) -> None:
    artefact = loader_container.put("tampered", hostile.TRACE, authority)
    (loader_container.models / artefact).write_bytes(hostile.os_system("env > pwnd.txt"))
    with pytest.raises(grpc.RpcError) as exc:
        call(loader_container, artefact, authority)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "digest mismatch" in exc.value.details()


def test_the_sandbox_has_only_loopback_and_a_read_only_root(loader_container: LoaderContainer) -> None:
    code, out = loader_container.exec_python("print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))")
    assert code == 0 and out.strip() == "['lo']"
    code, out = loader_container.exec_python("open('/pwnd', 'w')")
    assert code != 0 and "Read-only file system" in out
    code, out = loader_container.exec_python("open('/models/pwnd', 'w')")
    assert code != 0 and "Read-only file system" in out
    code, out = loader_container.exec_python("import os; print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    assert out.split() == ["10001", "0000000000000000"]


@pytest.mark.parametrize(
    ("name", "syscall"),
    [("io_uring_setup", 425), ("userfaultfd", 323), ("bpf", 321), ("perf_event_open", 298), ("keyctl", 250), ("unshare", 272)],
)
def test_the_container_seccomp_profile_denies_kernel_surface(loader_container: LoaderContainer, name: str, syscall: int) -> None:
    code, out = loader_container.exec_python(
        f"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); r = libc.syscall({syscall}, 0, 0, 0, 0, 0, 0); "
        "print(r, os.strerror(ctypes.get_errno()))"
    )
    assert code == 0
    assert out.strip() == "-1 Operation not permitted", f"{name}: {out}"


CONTAINED = {
    "os-system": (hostile.os_system("env > /tmp/pwnd.txt; env > /run/loader/pwnd.txt"), "not a scikit-learn estimator"),
    "write-socket-volume": (hostile.run_python("open('/run/loader/pwnd.txt', 'w')"), "Operation not permitted"),
    "write-scratch": (hostile.run_python("open('/tmp/pwnd.txt', 'w')"), "Operation not permitted"),
    "replace-socket": (hostile.run_python("import os; os.unlink('/run/loader/loader.sock')"), "Operation not permitted"),
    "socket": (hostile.run_python("import socket; socket.socket(socket.AF_UNIX)"), "Operation not permitted"),
    "io-uring-in-child": (hostile.run_python("import ctypes, os\nr = ctypes.CDLL(None, use_errno=True).syscall(425, 0, 0)\nraise OSError(ctypes.get_errno(), 'io_uring_setup ' + str(r))"), "io_uring_setup -1"),
    "fork-bomb": (hostile.run_python("import os\nwhile True: os.fork()"), "Operation not permitted"),
    "pip-install": (hostile.run_python("import subprocess; subprocess.run(['pip', 'install', 'requests'])"), "Operation not permitted"),
}


@pytest.mark.parametrize("case", sorted(CONTAINED))
def test_hostile_pickles_are_contained_inside_the_container(loader_container: LoaderContainer, authority: Authority, digits_svm_bytes: bytes, case: str) -> None:
    payload, words = CONTAINED[case]
    with pytest.raises(grpc.RpcError) as exc:
        call(loader_container, loader_container.put(f"hostile-{case}", payload, authority), authority)
    assert words in exc.value.details()
    assert not (loader_container.socket_dir / "pwnd.txt").exists()
    assert (loader_container.socket_dir / "loader.sock").exists()
    code, out = loader_container.exec_python("import os; print(os.listdir('/tmp'))")
    assert "pwnd.txt" not in out
    loader_container.container.reload()
    assert loader_container.container.status == "running"
    header, _ = call(loader_container, loader_container.put("good-again", digits_svm_bytes, authority), authority)
    assert header.size > 0
