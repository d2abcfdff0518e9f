import fcntl
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from loader._internal.paths import ModelsRoot, open_regular, read_once, read_sealed
from loader.errors import BadRequest, LimitExceeded, NotFound


@pytest.fixture()
def root(tmp_path: Path) -> ModelsRoot:
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "model.joblib").write_bytes(b"x")
    (tmp_path / "secret").write_text("s")
    return ModelsRoot(tmp_path / "models")


def test_relative_and_absolute_paths_inside_the_root_resolve(root: ModelsRoot) -> None:
    assert root.resolve("m/model.joblib", "artefact") == root.path / "m" / "model.joblib"
    assert root.resolve(str(root.path / "m" / "model.joblib"), "artefact") == root.path / "m" / "model.joblib"


@pytest.mark.parametrize("path", ["../secret", "m/../../secret", "/etc/passwd", "", "m/\x00"])
def test_paths_leaving_the_root_are_refused(root: ModelsRoot, path: str) -> None:
    with pytest.raises(BadRequest):
        root.resolve(path, "artefact")


def test_symlink_leaving_the_root_is_refused(root: ModelsRoot) -> None:
    os.symlink(root.path.parent / "secret", root.path / "m" / "escape.joblib")
    with pytest.raises(BadRequest, match="outside the models root"):
        root.resolve("m/escape.joblib", "artefact")


def test_bundle_defaults_prefer_sigstore_json_then_sigstore(root: ModelsRoot) -> None:
    artefact = root.path / "m" / "model.joblib"
    with pytest.raises(NotFound, match="model.joblib.sigstore.json"):
        root.bundle_for(artefact, "")
    (root.path / "m" / "model.joblib.sigstore").write_text("{}")
    assert root.bundle_for(artefact, "").name == "model.joblib.sigstore"
    (root.path / "m" / "model.joblib.sigstore.json").write_text("{}")
    assert root.bundle_for(artefact, "").name == "model.joblib.sigstore.json"


def test_read_once_enforces_the_size_cap_and_refuses_symlinks(root: ModelsRoot, tmp_path: Path) -> None:
    big = root.path / "m" / "big"
    big.write_bytes(b"0" * 100)
    with pytest.raises(LimitExceeded):
        read_once(big, "artefact", 99)
    assert read_once(big, "artefact", 100) == b"0" * 100
    os.symlink(big, root.path / "m" / "link")
    with pytest.raises(BadRequest):
        read_once(root.path / "m" / "link", "artefact", 100)
    with pytest.raises(NotFound):
        read_once(root.path / "m" / "missing", "artefact", 100)


def test_a_model_directory_is_signed_by_its_model_sig_and_loaded_through_its_model_file(root: ModelsRoot) -> None:
    folder = root.path / "m"
    with pytest.raises(NotFound, match="model.sig"):
        root.bundle_for(folder, "")
    (folder / "model.sig").write_text("{}")
    assert root.bundle_for(folder, "") == folder / "model.sig"
    # A file of a signed directory: its own bundle first, else the directory's model.sig.
    assert root.bundle_for(folder / "model.joblib", "") == folder / "model.sig"
    (folder / "model.joblib.sigstore.json").write_text("{}")
    assert root.bundle_for(folder / "model.joblib", "").name == "model.joblib.sigstore.json"


def test_the_model_file_of_a_directory_follows_mlservers_well_known_names(root: ModelsRoot) -> None:
    folder = root.path / "m"
    assert root.model_file(folder / "model.joblib") == folder / "model.joblib"
    (folder / "model.pkl").write_bytes(b"y")
    assert root.model_file(folder) == folder / "model.joblib"
    (folder / "model.joblib").unlink()
    (folder / "model.pickle").write_bytes(b"z")
    assert root.model_file(folder) == folder / "model.pickle"
    empty = root.path / "empty"
    empty.mkdir()
    with pytest.raises(NotFound, match="model.joblib"):
        root.model_file(empty)


def test_the_well_known_model_files_are_mlservers() -> None:
    """The loader cannot import MLServer; its copy of the lookup order must not drift."""
    from mlserver_sklearn.sklearn import WELLKNOWN_MODEL_FILENAMES

    from loader.bundles import WELL_KNOWN_MODEL_FILES

    assert list(WELL_KNOWN_MODEL_FILES) == list(WELLKNOWN_MODEL_FILENAMES)


# Special files: a models-root file is opened without blocking and its type checked on the
# descriptor (issue 25, item 5). Each case runs on a thread: on code that opens before it checks,
# `open` of a FIFO blocks until a writer comes; the test then plays that writer so the thread
# ends. The verdict is the refusal's message, never how long it took.


def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        _keep.append(listener)
    elif kind == "character device":
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    elif kind == "symbolic link":
        (path.parent / "target").write_bytes(b"x")
        os.symlink(path.parent / "target", path)
    elif kind == "directory":
        path.mkdir()


_keep: list[socket.socket] = []
KINDS = {
    "fifo": "a FIFO (named pipe)",
    "socket": "a socket",
    "character device": "a character device",
    "symbolic link": "a symbolic link",
    "directory": "a directory",
}


def _refusal(call: Callable[[], object], path: Path) -> tuple[BaseException | None, bool]:
    """What `call` raised, and whether it was found blocked opening the FIFO (seen in the
    kernel's wait channel of its thread, not guessed from how long it took)."""
    outcome: list[BaseException | None] = []
    tid: list[int] = []

    def run() -> None:
        tid.append(threading.get_native_id())
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the verdict looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    blocked = False
    thread.join(5)
    while thread.is_alive():
        if Path(f"/proc/self/task/{tid[0]}/wchan").read_text() == "wait_for_partner":
            blocked = True
            try:  # be the writer the blocked reader waits for, so that the thread ends
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(1)
    return outcome[0], blocked


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reader", ["read_once", "read_sealed"])
def test_a_special_file_is_refused_naming_what_it_is(root: ModelsRoot, kind: str, reader: str) -> None:
    if kind == "character device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    path = root.path / "m" / "special"
    _special(kind, path)
    read = read_once if reader == "read_once" else read_sealed
    refusal, blocked = _refusal(lambda: read(path, "artefact", 1 << 20), path)
    assert not blocked, f"the read blocked opening {path}"
    assert isinstance(refusal, BadRequest), refusal
    assert f"artefact {path} is {KINDS[kind]}" in str(refusal)


def test_a_regular_file_is_read_through_a_blocking_descriptor(root: ModelsRoot) -> None:
    fd, info = open_regular(root.path / "m" / "model.joblib", "artefact")
    try:
        assert os.get_blocking(fd) and info.st_size == 1
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)
