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
from tests.container.conftest import ControlContainer, LoaderContainer
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
    # The verdict travels in the exit status (an exec's output was once lost while the daemon
    # reloaded its configuration); the output names what was found.
    code, out = loader_container.exec_python(
        "import sys; found = sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]); "
        "print(found); sys.exit(0 if found == ['lo'] else 3)"
    )
    assert code == 0, out
    code, out = loader_container.exec_python("open('/pwnd', 'w')")
    assert code != 0 and "Read-only file system" in out
    code, out = loader_container.exec_python("open('/models/pwnd', 'w')")
    assert code != 0 and "Read-only file system" in out
    code, out = loader_container.exec_python("import os; print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    assert out.split() == ["10001", "0000000000000000"]


# bpf needs CAP_BPF even with no profile at all, so it cannot fire for the loader's user: it is
# proven in the host tier (the child as root) instead.
KERNEL_SURFACE = sorted(set(hostile.SYSCALL_PROBES) - {"bpf"})


def _probe(name: str) -> str:
    return (
        "import ctypes, os, struct; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = {hostile.SYSCALL_PROBES[name]}; print(r, os.strerror(ctypes.get_errno()) if r < 0 else 'ok')"
    )


@pytest.mark.parametrize("name", KERNEL_SURFACE)
def test_the_container_seccomp_profile_denies_kernel_surface(loader_container: LoaderContainer, control_container: ControlContainer, name: str) -> None:
    """The loader's own profile (as compose runs it) denies syscalls that work without it.

    Control: the same call, same image and user, no capabilities, no seccomp profile, succeeds.
    """
    control = control_container.container.exec_run(["python", "-c", _probe(name)], user="10001:10000")
    assert control.exit_code == 0 and control.output.decode().split()[0].isdigit(), f"{name} did not succeed unconfined: {control.output!r}"
    code, out = loader_container.exec_python(_probe(name))
    # EPERM from the profile, or (default-deny profiles that kill) the process killed by SIGSYS.
    assert (code == 0 and out.strip() == "-1 Operation not permitted") or code in (-31, 159), f"{name}: exit {code}, {out}"
