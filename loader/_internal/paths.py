"""Resolve request paths inside the read-only models root, and read files exactly once."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from loader._internal.memfd import SealedFile, copy_from
from loader.bundles import WELL_KNOWN_MODEL_FILES, describe_candidates, find_bundle, model_file_in
from loader.errors import BadRequest, LimitExceeded, NotFound


@dataclass(frozen=True)
class ModelsRoot:
    """The folder the loader may read artefacts and bundles from; nothing outside it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(os.path.realpath(self.path)))

    def resolve(self, requested: str, what: str) -> Path:
        """Map a request path to a real path inside the root, or refuse it."""
        if not requested or "\x00" in requested:
            raise BadRequest(f"{what} path is empty or contains NUL")
        raw = Path(requested)
        if ".." in raw.parts:
            raise BadRequest(f"{what} path {requested!r} contains '..'; give a path inside the models root")
        candidate = raw if raw.is_absolute() else self.path / raw
        real = Path(os.path.realpath(candidate))
        if real != self.path and self.path not in real.parents:
            raise BadRequest(
                f"{what} path {requested!r} resolves to {real}, outside the models root {self.path}"
            )
        return real

    def bundle_for(self, artefact: Path, requested: str) -> Path:
        """The bundle path: the requested one, else the default next to the artefact
        (`<file>.sigstore.json`, `<file>.sigstore`, then the directory's `model.sig`)."""
        if requested:
            return self.resolve(requested, "bundle")
        found = find_bundle(artefact)
        if found is None:
            raise NotFound(
                f"no bundle for {artefact.name}: expected {describe_candidates(artefact)} "
                "(written by `sigstore sign` or `model_signing sign`)"
            )
        return self.resolve(str(found), "bundle")

    def model_file(self, artefact: Path) -> Path:
        """The file to load: the artefact itself, or a model directory's well-known model file."""
        if not artefact.is_dir():
            return artefact
        found = model_file_in(artefact)
        if found is None:
            raise NotFound(f"the model directory {artefact} holds none of {list(WELL_KNOWN_MODEL_FILES)}")
        return found


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind_of(mode: int) -> str:
    """What a file of this mode is, for a refusal that names it."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    """Open `path` for reading only if it is a regular file, and never block doing so.

    A FIFO would block `open` until a writer came, a device could act on being opened, a link
    swapped in after the path was resolved could point anywhere: the file is opened without
    blocking and without following a link at the last component, its type is checked on the
    open descriptor, and only then is the descriptor made blocking again for reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            kind = kind_of(mode)
            raise BadRequest(f"{what} {path} is {kind}; only a regular file can be loaded") from None
        raise BadRequest(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest(f"{what} {path} is {kind_of(info.st_mode)}; only a regular file can be loaded")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _open_regular(path: Path, what: str, max_bytes: int) -> tuple[int, os.stat_result]:
    """Open a regular file (see `open_regular`) within a size cap."""
    fd, info = open_regular(path, what)
    if info.st_size > max_bytes:
        os.close(fd)
        raise LimitExceeded(f"{what} {path} is {info.st_size} bytes; the limit is {max_bytes}")
    return fd, info


def read_sealed(path: Path, what: str, max_bytes: int) -> tuple[SealedFile, str]:
    """Read a file once, straight into the sealed memfd that is verified and unpickled, hashing
    it on the way; returns the file and its hex SHA-256."""
    fd, info = _open_regular(path, what, max_bytes)
    try:
        return copy_from(fd, info.st_size, what)
    except ValueError as exc:
        raise BadRequest(f"{what} {path} changed while it was read ({exc}); refused") from None
    finally:
        os.close(fd)


def read_once(path: Path, what: str, max_bytes: int) -> bytearray:
    """Read a regular file in one go (no symlink at the last component), within a size cap."""
    fd, info = _open_regular(path, what, max_bytes)
    try:
        # Read into one preallocated buffer (one copy); one spare byte detects a file that grew.
        buffer = bytearray(info.st_size + 1)
        view = memoryview(buffer)
        filled = 0
        with open(fd, "rb", buffering=0, closefd=False) as raw:
            while filled < len(buffer):
                n = raw.readinto(view[filled:])
                if not n:
                    break
                filled += n
        if filled > info.st_size:
            raise LimitExceeded(f"{what} {path} grew while it was read; refused")
        del view
        del buffer[filled:]
        return buffer
    finally:
        os.close(fd)
