"""OpenSSF model-signing bundles: read them with the `model_signing` library, and compare the
signed manifest with what lies on disk.

The library verifies by path (it opens and hashes files itself). Here the model file is hashed
from the one buffer that is then unpickled, and every other file of the directory is streamed
once through the manifest's own hash engine; the resulting manifest is compared with the signed
one, and each difference is named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from model_signing import manifest as ms_manifest
from model_signing._hashing import hashing as ms_hashing
from model_signing._hashing import memory

from loader._internal import oms
from loader._internal.paths import kind_of, open_regular
from loader.errors import BadRequest, LimitExceeded, NotFound, VerificationFailed

SINGLE_FILE = oms.SINGLE_FILE
_ENGINES: dict[str, Callable[[], ms_hashing.StreamingHashEngine]] = {"sha256": memory.SHA256, "blake2b": memory.BLAKE2, "blake3": memory.BLAKE3}
_CHUNK = 1 << 20
MAX_FILES = 100_000


def _engine(hash_type: str) -> ms_hashing.StreamingHashEngine:
    try:
        return _ENGINES[hash_type]()
    except KeyError:
        raise VerificationFailed(f"the signed manifest uses an unsupported hash {hash_type!r}") from None


def _digests(read: Iterator[bytes | memoryview], size: int, params: dict[str, Any]) -> list[tuple[int, int, ms_hashing.Digest]]:
    """Digests of one file: whole (method `files`) or per shard (method `shards`)."""
    shard = int(params["shard_size"]) if params.get("method") == "shards" else 0
    if shard and size == 0:
        return []  # model_signing records no shard for an empty file
    ends = (list(range(shard, size, shard)) + [size]) if shard else [size]
    out = []
    start = 0
    pending = memoryview(b"")
    for end in ends:
        engine = _engine(str(params["hash_type"]))
        want = end - start
        while want > 0:
            if not len(pending):
                pending = memoryview(next(read, b""))
                if not len(pending):
                    raise LimitExceeded("a file shrank while it was hashed; refused")
            piece = pending[:want]
            engine.update(piece)  # type: ignore[arg-type]
            pending, want = pending[len(piece) :], want - len(piece)
        digest = engine.compute()
        if shard:  # model_signing names a shard's algorithm after the shard size
            digest = ms_hashing.Digest(f"{digest.algorithm}-sharded-{shard}", digest.digest_value)
        out.append((start, end, digest))
        start = end
    return out


def _chunks_of(buffer: bytes | bytearray) -> Iterator[memoryview]:
    view = memoryview(buffer)
    for offset in range(0, len(view), _CHUNK):
        yield view[offset : offset + _CHUNK]


def _hash_file(path: Path, name: str, budget: int, params: dict[str, Any]) -> tuple[int, list[ms_manifest.ManifestItem]]:
    """Stream one regular file (never following a link) through the manifest's hash engine."""
    fd, info = open_regular(path, "model directory member")
    with open(fd, "rb", buffering=0) as raw:
        if info.st_size > budget:
            raise LimitExceeded(f"the model directory is larger than the artefact size limit (at {path})")
        chunks = iter(lambda: raw.read(_CHUNK), b"")
        return info.st_size, _items(name, chunks, info.st_size, params)


def _ignored(relative: PurePosixPath, ignore: list[PurePosixPath]) -> bool:
    return any(relative == p or p in relative.parents for p in ignore)


def _walk(directory: Path, ignore: list[PurePosixPath]) -> list[PurePosixPath]:
    """Every regular file under `directory` that is not ignored; symlinks and specials refused."""
    found: list[PurePosixPath] = []
    pending = [PurePosixPath()]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(directory / folder), key=lambda e: e.name)
        except OSError as exc:
            raise BadRequest(f"cannot list {directory / folder}: {exc.strerror}") from None
        for entry in entries:
            relative = folder / entry.name
            if _ignored(relative, ignore):
                continue
            if entry.is_symlink():
                raise VerificationFailed(
                    f"{relative} in the model directory {directory} is a symbolic link; links are refused "
                    "(a signed directory holds only regular files)"
                )
            if entry.is_dir(follow_symlinks=False):
                pending.append(relative)
            elif entry.is_file(follow_symlinks=False):
                found.append(relative)
            else:
                kind = kind_of(entry.stat(follow_symlinks=False).st_mode)
                raise VerificationFailed(f"{relative} in the model directory {directory} is {kind}, not a regular file")
            if len(found) > MAX_FILES:
                raise LimitExceeded(f"the model directory {directory} holds more than {MAX_FILES} files")
    return sorted(found)


def _resources(signed: ms_manifest.Manifest) -> dict[str, bytes]:
    """Digest values by resource name. The algorithm names are left out: OMS v1.0 names a shard's
    algorithm after hash_type and model_signing after the shard size; oms.py checks the name,
    and every digest here is computed with the manifest's hash_type."""
    return {rd.identifier: rd.digest.digest_value for rd in signed.resource_descriptors()}


def _file_of(identifier: str, params: dict[str, Any]) -> str:
    return identifier.rsplit(":", 2)[0] if params.get("method") == "shards" else identifier


def signed_files(signed: ms_manifest.Manifest) -> list[str]:
    params = signed.serialization_type
    return sorted({_file_of(identifier, params) for identifier in _resources(signed)})


def covers_one_file(signed: ms_manifest.Manifest) -> bool:
    return signed_files(signed) == [SINGLE_FILE]


def _buffer_items(name: str, data: bytes | bytearray, sha256: str, params: dict[str, Any]) -> list[ms_manifest.ManifestItem]:
    """Items of the in-memory model file; its sha256, already computed, is reused when it is one."""
    if params.get("method") == "files" and params.get("hash_type") == "sha256" and sha256:
        return [ms_manifest.SerializationType.from_args(params).new_item(name, ms_hashing.Digest("sha256", bytes.fromhex(sha256)))]
    return _items(name, _chunks_of(data), len(data), params)


def _items(name: str, data: Iterator[bytes | memoryview], size: int, params: dict[str, Any]) -> list[ms_manifest.ManifestItem]:
    kind = ms_manifest.SerializationType.from_args(params)
    if params.get("method") == "shards":
        return [kind.new_item(f"{name}:{start}:{end}", digest) for start, end, digest in _digests(data, size, params)]
    return [kind.new_item(name, digest) for _, _, digest in _digests(data, size, params)]


def _compare(signed: ms_manifest.Manifest, actual: ms_manifest.Manifest, where: str) -> None:
    expected, found = _resources(signed), _resources(actual)
    if expected == found:
        return
    params = signed.serialization_type
    changed = sorted({_file_of(i, params) for i in set(expected) & set(found) if expected[i] != found[i]})
    missing = sorted({_file_of(i, params) for i in set(expected) - set(found)} - set(changed))
    added = sorted({_file_of(i, params) for i in set(found) - set(expected)} - set(changed) - set(missing))
    problems = []
    if changed:
        problems.append(f"changed since signing: {', '.join(changed)}")
    if missing:
        problems.append(f"signed but missing: {', '.join(missing)}")
    if added:
        problems.append(
            f"not covered by the signature: {', '.join(added)} (remove them, or list them in ignore_paths "
            "if the signer excluded them)"
        )
    if missing and len({_file_of(i, params) for i in found}) == 1:
        problems.append("the signature covers a whole model directory: give that directory, not one file")
    raise VerificationFailed(
        f"the model directory {where} does not match its signed manifest ({len(signed_files(signed))} files): "
        + "; ".join(problems)
    )


def check_file(signed: ms_manifest.Manifest, data: bytes | bytearray, name: str, sha256: str = "") -> None:
    """A one-file manifest must hold exactly these bytes (`sha256`: theirs, if known)."""
    params = signed.serialization_type
    items = _buffer_items(SINGLE_FILE, data, sha256, params)
    actual = ms_manifest.Manifest(signed.model_name, items, ms_manifest.SerializationType.from_args(params))
    if _resources(actual) != _resources(signed):
        raise VerificationFailed(
            f"the signed model-signing manifest does not name this artefact ({name}): it attests to other "
            "bytes (modified or replaced)"
        )


def _exclusions(signed: ms_manifest.Manifest, directory: Path, ignore_paths: list[str], signature: Path | None) -> list[PurePosixPath]:
    """What verification skips (OMS §6.2): the default exclusions, the signer's ignore paths,
    the request's (checked here: exact relative paths) and the signature file itself."""
    for path in ignore_paths:
        if problem := oms.ignore_path_problem(path):
            raise BadRequest(f"{problem} (OMS v1.0 §6.2.1)")
    listed = [*oms.DEFAULT_EXCLUSIONS, *(signed.serialization_type.get("ignore_paths") or []), *ignore_paths]
    ignore = [PurePosixPath(p) for p in listed]
    if signature is not None and signature.resolve().is_relative_to(directory.resolve()):
        ignore.append(PurePosixPath(signature.resolve().relative_to(directory.resolve()).as_posix()))
    return ignore


def _check_enumerated(signed: ms_manifest.Manifest, directory: Path, files: list[PurePosixPath]) -> None:
    """OMS rules on what lies on disk: UTF-8 names (§6.1.2), a model that is not empty (§6.1),
    and signed resources that are regular files, not directories (§5.2.1)."""
    for relative in files:
        try:
            str(relative).encode("utf-8")
        except UnicodeEncodeError:
            raise VerificationFailed(
                f"OMS v1.0 §6.1.2: the file name {str(relative)!r} in {directory} is not valid UTF-8"
            ) from None
    if not files:
        raise VerificationFailed(f"OMS v1.0 §6.1: the model directory {directory} holds no file to verify (empty model)")
    for name in signed_files(signed):
        if name != SINGLE_FILE and (directory / name).is_dir() and not (directory / name).is_symlink():
            raise VerificationFailed(
                f"OMS v1.0 §5.2.1: the signed resource {name!r} is a directory in {directory}; resources are regular files only"
            )


def check_directory(
    signed: ms_manifest.Manifest,
    directory: Path,
    model_file: PurePosixPath | None,
    model_bytes: bytes | bytearray,
    ignore_paths: list[str],
    max_bytes: int,
    model_sha256: str = "",
    signature: Path | None = None,
) -> list[str]:
    """Hash every file of `directory` (the model file, if any, from `model_bytes`, whose sha256
    may be given) and require the signed manifest exactly; return the files verified.
    `ignore_paths` are relative to `directory`; `signature`, the bundle, is skipped if inside."""
    params = signed.serialization_type
    ignore = _exclusions(signed, directory, ignore_paths, signature)
    if model_file is not None and _ignored(model_file, ignore):
        raise VerificationFailed(f"{model_file} is excluded from the signature (ignore_paths); it cannot be loaded")
    files = _walk(directory, ignore)
    if model_file is not None and model_file not in files:
        raise NotFound(f"the model file {model_file} is not in the model directory {directory}")
    _check_enumerated(signed, directory, files)
    budget = max_bytes
    items: list[ms_manifest.ManifestItem] = []
    for relative in files:
        if relative == model_file:
            size, hashed = len(model_bytes), _buffer_items(str(relative), model_bytes, model_sha256, params)
        else:
            size, hashed = _hash_file(directory / relative, str(relative), budget, params)
        budget -= size
        if budget < 0:
            raise LimitExceeded(f"the model directory {directory} is larger than {max_bytes} bytes")
        items += hashed
    actual = ms_manifest.Manifest(directory.name, items, ms_manifest.SerializationType.from_args(params))
    if model_file is not None and str(model_file) not in signed_files(signed):
        raise VerificationFailed(
            f"the signature covers the directory {directory} ({', '.join(signed_files(signed))}) but not "
            f"the model file {model_file}"
        )
    _compare(signed, actual, str(directory))
    return [str(f) for f in files]
