"""Build the model from a pre-scanned skops archive with skops' own node tree and audit,
reading each array straight from the model file into its final memory.

`skops.io.load` reads an array member whole into a fresh `bytes` (checking its CRC-32 on the
way) and then copies that, chunk by chunk, into the array numpy allocates: for a 200 MB model,
two fresh 200 MB allocations and three passes. Here numpy reads the member's data from the file
into the array (one pass), the rest of the tree being skops' unchanged. Skipping the CRC loses
nothing: the whole archive's digest is checked against the loader's before the model is kept.

Only for archives `prescan.scan` accepted: every array member is a stored `.npy` whose header
declares exactly the member's size.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format
from skops.io._audit import NODE_TYPE_MAPPING, Node, audit_tree, get_tree
from skops.io._numpy import NdArrayNode
from skops.io._protocol import PROTOCOL
from skops.io._trusted_types import NUMPY_DTYPE_TYPE_NAMES
from skops.io._utils import LoadContext

from runtime._internal.prescan import read_npy_header
from runtime.errors import ModelRefused

# zipfile's own description of a local file header (not in its public API).
_LOCAL_HEADER = struct.Struct(zipfile.structFileHeader)  # type: ignore[attr-defined]
_LOCAL_MAGIC = zipfile.stringFileHeader  # type: ignore[attr-defined]


class SkopsArchive(zipfile.ZipFile):
    """A skops archive whose stored array members can be read in place."""

    def in_place(self, info: zipfile.ZipInfo) -> bool:
        """True for a member whose bytes are read where they are, from the archive's file:
        stored, not encrypted, and as long as it says (zipfile's own reader refuses or
        decompresses the others, and reads archives held in memory)."""
        return (
            isinstance(self.fp, (io.BufferedReader, io.FileIO))
            and info.compress_type == zipfile.ZIP_STORED
            and info.compress_size == info.file_size
            and not info.flag_bits & 0x1
        )

    @contextmanager
    def member_data(self, name: str) -> Iterator[IO[bytes]]:
        """A file positioned at the start of member `name`'s bytes: the archive's own file when
        numpy can read from it directly and the member is stored, else a copy of the member."""
        info = self.getinfo(name)
        source = self.fp
        if source is None or not self.in_place(info):
            yield io.BytesIO(self.read(name))
            return
        with self._lock:  # type: ignore[attr-defined] # zipfile's lock over the shared file
            source.seek(info.header_offset)
            header = source.read(_LOCAL_HEADER.size)
            fields = _LOCAL_HEADER.unpack(header) if len(header) == _LOCAL_HEADER.size else None
            if fields is None or fields[zipfile._FH_SIGNATURE] != _LOCAL_MAGIC:  # type: ignore[attr-defined]
                raise zipfile.BadZipFile(f"member {name!r} has no local file header")
            # As zipfile.open checks: the local header names the member the directory does.
            local_name = source.read(fields[zipfile._FH_FILENAME_LENGTH])  # type: ignore[attr-defined]
            if local_name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
                raise zipfile.BadZipFile(f"member {name!r} has another name in its local header")
            start = source.seek(fields[zipfile._FH_EXTRA_FIELD_LENGTH], io.SEEK_CUR)  # type: ignore[attr-defined]
            # The data must end before the central directory: numpy reads as many bytes as the
            # (pre-scanned) header declares, and they must all be the member's.
            if start + info.file_size > self.start_dir:  # type: ignore[attr-defined]
                raise zipfile.BadZipFile(f"member {name!r} runs past the end of the archive's data")
            yield source


class _InPlaceArrayNode(NdArrayNode):
    """skops' array node, reading its member when constructed rather than copying it when the
    tree is built (the audit sees the member's name where skops keeps its copy)."""

    def __init__(self, state: dict[str, Any], load_context: LoadContext, trusted: Any = None) -> None:
        self._member: str | None = None
        if state.get("type") != "numpy" or not isinstance(load_context.src, SkopsArchive):
            super().__init__(state, load_context, trusted)
            return
        Node.__init__(self, state, load_context, trusted)
        self.type = "numpy"
        self.trusted = self._get_trusted(trusted, [np.ndarray, *NUMPY_DTYPE_TYPE_NAMES])  # as skops' node
        self._archive = load_context.src
        self._member = state["file"]
        self.children = {"content": self._member}

    def _construct(self) -> Any:
        if self._member is None:
            return super()._construct()
        with self._archive.member_data(self._member) as data:
            if f"{self.module_name}.{self.class_name}" == "numpy.ndarray":
                return _read_array(data)
            self.buffer = data  # what skops' own construct reads the array from
            return super()._construct()


def _read_array(data: IO[bytes]) -> np.ndarray:
    """The array of an `.npy` stream, as `np.load(allow_pickle=False)` reads it, its header
    parsed as the pre-scan parsed it (numpy's parser compiles each header)."""
    header = read_npy_header(data)
    if header.dtype.hasobject:
        raise ValueError("an array with an object dtype")
    count = header.count
    from_file = npy_format.isfileobj(data)
    if from_file and count * header.dtype.itemsize < _SMALL_PAGES_FROM:
        # The model file: numpy reads it straight into the array.
        array = np.fromfile(data, dtype=header.dtype, count=count) if count else np.empty(0, header.dtype)
        if array.size != count:
            raise ValueError(f"an array member holds {array.size} of its {count} items")
    else:  # a large array from the model file, an archive in memory, or a member copied out of one
        array = np.empty(count, header.dtype)
        with _faulted_in_small_pages(array) if from_file else nullcontext():
            read = _read_into(data, array.view(np.uint8)) if array.nbytes else 0
        if read != array.nbytes:
            raise ValueError(f"an array member holds {read} of its {array.nbytes} bytes")
    if header.fortran_order:
        return array.reshape(header.shape[::-1]).transpose()
    return array.reshape(header.shape)


# Arrays from this size on are first written in 4 KiB pages. numpy asks for transparent huge
# pages; where the hypervisor has taken back free memory, faulting in fresh huge pages took
# 0.3-0.7 s instead of ~30 ms for 200 MB in about half the loads, and 4 KiB pages a steady
# ~150 ms (docs/decisions/transport.md). Huge pages are allowed again once the array is filled,
# for the kernel to collapse in the background.
_SMALL_PAGES_FROM = 64 << 20
_MADV_HUGEPAGE, _MADV_NOHUGEPAGE = 14, 15
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


@contextmanager
def _faulted_in_small_pages(array: np.ndarray) -> Iterator[None]:
    page = mmap.PAGESIZE
    first = (array.ctypes.data + page - 1) // page * page
    end = (array.ctypes.data + array.nbytes) // page * page
    if end > first:
        _libc.madvise(first, end - first, _MADV_NOHUGEPAGE)  # advice only: a failure changes nothing
    try:
        yield
    finally:
        if end > first:
            _libc.madvise(first, end - first, _MADV_HUGEPAGE)


def _read_into(data: IO[bytes], target: np.ndarray) -> int:
    view = target.data.cast("B")
    filled = 0
    while filled < len(view):
        n = data.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            break
        filled += n
    return filled


# A key no schema.json can name (theirs are integers): the node classes of skops' current
# protocol, with arrays read in place.
_IN_PLACE = ("mlserver-sigstore", PROTOCOL)
NODE_TYPE_MAPPING[("NdArrayNode", _IN_PLACE)] = _InPlaceArrayNode


def construct(archive: SkopsArchive, schema: dict[str, Any], trusted: list[str]) -> Any:
    """skops' load of an archive already open and scanned: node tree, audit with exactly
    `trusted`, construction."""
    protocol = schema.get("protocol")
    if protocol != PROTOCOL:
        raise ModelRefused(
            f"the converted model was written with skops protocol {protocol}; this server reads "
            f"protocol {PROTOCOL}: run the loader and MLServer from the same release",
            422,
        )
    context = LoadContext(src=archive, protocol=_IN_PLACE)  # type: ignore[arg-type]
    tree = get_tree(schema, context, trusted=trusted)
    audit_tree(tree, trusted=trusted)
    return tree.construct()
