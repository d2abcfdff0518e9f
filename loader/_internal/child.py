"""The confined child: the only code that ever unpickles an artefact.

It runs in a process forked from the fork server, which has imported `preload` (scikit-learn,
skops, ...) already; this module itself stays light so that the gRPC server can reference
`run` without importing any of that.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

from loader._internal.confine import ChildLimits, confine, isolate


class PassedFd:
    """A file descriptor handed to a fork-server child (duplicated over the server's socket)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return PassedFd._rebuild, (reduction.DupFd(self.fd),)

    @staticmethod
    def _rebuild(dup: Any) -> PassedFd:  # a multiprocessing DupFd, rebuilt in the child
        return PassedFd(dup.detach())


# The child's only message from the parent: one byte (whether to report skops' untrusted types)
# plus two descriptors over `control`.
_HANDOFF_FDS = 2
REPORT_TYPES, NO_TYPES = b"t", b"-"


def ready_message(landlock: str) -> bytes:
    """Sent on `status` once the child is confined and about to wait for its artefact, with the
    Landlock status line of what it applied (the loader checks it is what it announced)."""
    return json.dumps({"ready": True, "landlock": landlock}).encode()

# A model from a pickle smaller than this is converted in memory and written with one call.
_IN_MEMORY_BELOW = 8 << 20
# After its result, a child waits this long to be ended by the loader before it exits itself.
_ENDED_WITHIN_SECONDS = 30
# A small trusted model, pickled by the fork server (see `prepare_warm_up`).
_warm_up_sample = b""


def prepare_warm_up() -> None:
    """Pickle small fitted models of the common families and convert them once; run by the
    fork server at preload.

    Each child converts them again before it reports ready: a freshly forked child's first
    unpickle and conversion are several times slower than later ones (copy-on-write faults on
    the pages the code touches, caches filled lazily), and that belongs in the pool's idle time
    rather than on a load. One family's warm-up leaves another's code cold (an SVC converted
    ~1 ms slower after a pipeline-only warm-up).
    """
    global _warm_up_sample

    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    features, labels = rng.random((16, 4)), np.arange(16) % 2
    families = [
        make_pipeline(StandardScaler(), LogisticRegression()),
        SVC(),
        RandomForestClassifier(n_estimators=2, random_state=0),
        KNeighborsClassifier(n_neighbors=2),
    ]
    sample = io.BytesIO()
    joblib.dump([model.fit(features, labels) for model in families], sample)
    _warm_up_sample = sample.getvalue()
    _warm_up()


def _warm_up() -> None:
    if not _warm_up_sample:
        return

    from loader._internal import skops_writer, unpickle

    try:
        model = unpickle.load_mapped(io.BytesIO(_warm_up_sample), bytearray(_warm_up_sample))
        skops_writer.dump(model, io.BytesIO())
    except Exception:  # noqa: BLE001, S110 - only a head start: a failure costs speed, nothing else
        pass


def _convert(artefact_fd: int, result_fd: int, report_types: bool) -> tuple[int, list[str] | None, dict[str, float]]:
    # Already imported by the fork server (preload), so these cost nothing here.
    import sklearn.base

    from loader._internal import skops_writer, unpickle

    started = time.perf_counter()
    # An uncompressed pickle's skops form is about its size (a compressed joblib file's is not).
    expected_size = os.fstat(artefact_fd).st_size if unpickle.is_uncompressed_pickle(artefact_fd) else None
    model = unpickle.load_artefact(artefact_fd)
    unpickled = time.perf_counter()
    if not isinstance(model, sklearn.base.BaseEstimator):
        raise TypeError(
            f"the artefact holds a {type(model).__module__}.{type(model).__qualname__}, "
            "not a scikit-learn estimator"
        )
    with os.fdopen(result_fd, "w+b") as sink:
        if expected_size is not None and expected_size < _IN_MEMORY_BELOW:
            # zipfile's many small writes and seeks per member cost more than one copy.
            buffer = io.BytesIO()
            skops_writer.dump(model, buffer)
            sink.write(buffer.getbuffer())
        else:
            skops_writer.dump(model, sink)
        sink.flush()
        size = sink.tell()
        converted = time.perf_counter()
        sink.seek(0)
        untrusted = _reported_types(sink) if report_types else None
    done = time.perf_counter()
    return size, untrusted, {"unpickle": unpickled - started, "convert": converted - unpickled, "types": done - converted}


def _reported_types(archive_file: Any) -> list[str]:
    """skops' own type audit, run on a copy of the archive without its array members.

    The audit reads each member whole but only parses the schema, so emptied members give the
    same answer without a second pass over the model's bytes. For information only: the
    runtime's allowlist decides.
    """
    import zipfile

    import skops.io

    light = io.BytesIO()
    with zipfile.ZipFile(archive_file) as full, zipfile.ZipFile(light, "w") as copy:
        for info in full.infolist():
            copy.writestr(info.filename, full.read(info) if info.filename == "schema.json" else b"")
    return skops.io.get_untrusted_types(data=light.getvalue())


def child_descriptors(control: int, status: int) -> tuple[int, ...]:
    """The only descriptors a confined child holds while it waits: stdin (/dev/null), stdout and
    stderr (the output pipe), `control` and `status`."""
    return (0, 1, 2, control, status)


def _receive(control: socket.socket) -> tuple[int, int, bool] | None:
    """Wait for the artefact and the result memfd; None if the parent closed the connection."""
    message, fds, _, _ = socket.recv_fds(control, 1, _HANDOFF_FDS)
    if len(fds) != _HANDOFF_FDS:
        for fd in fds:
            os.close(fd)
        return None
    return fds[0], fds[1], message == REPORT_TYPES


def run(control: PassedFd, status: Connection, output: Connection, limits: ChildLimits) -> None:
    """Child entry point: confine, wait for one artefact, write its skops form, exit.

    The child is confined before it is given anything: a pre-forked child waits, already under
    its limits and syscall filter, in `recvmsg` on `control` for the artefact's sealed memfd and
    the memfd to write the result into. It serves exactly one artefact.
    """
    try:
        # Whatever the payload prints goes to a pipe the parent reads with a cap.
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        output.close()
        os.chdir("/")
        # Relative sys.path entries ('' is the working directory) would resolve against "/".
        sys.path[:] = [entry for entry in sys.path if os.path.isabs(entry)]
        os.environ.clear()
        channel = socket.socket(fileno=control.fd)  # probes the socket now, before the filter
        # Exactly: /dev/null as stdin, the output pipe as stdout and stderr, control, status.
        isolate(child_descriptors(channel.fileno(), status.fileno()))
        landlock = confine(limits)
    except Exception as exc:  # noqa: BLE001 - report any confinement failure, never run unconfined
        status.send_bytes(json.dumps({"ok": False, "error": f"could not confine the child: {exc}"}).encode())
        os._exit(3)
    _warm_up()  # confined already: it is our own model, but nothing runs unconfined here
    status.send_bytes(ready_message(landlock))
    try:
        received = _receive(channel)
    except OSError:
        received = None
    if received is None:
        os._exit(0)  # the pool was shut down before this child was used
    try:
        size, untrusted, timings = _convert(*received)
    except MemoryError:
        status.send_bytes(json.dumps({"ok": False, "limit": "memory"}).encode())
        os._exit(4)
    except BaseException as exc:  # noqa: BLE001 - hostile payloads raise anything
        message = f"{type(exc).__name__}: {exc}"[:2000]
        status.send_bytes(json.dumps({"ok": False, "error": message}).encode())
        os._exit(5)
    status.send_bytes(json.dumps({"ok": True, "untrusted_types": untrusted, "size": size, "timings": timings}).encode())
    sys.stdout.flush()
    # The loader seals the result, then ends this process: exiting now would tear the address
    # space down (milliseconds) while the loader seals and hands the model on.
    time.sleep(_ENDED_WITHIN_SECONDS)
    os._exit(0)
