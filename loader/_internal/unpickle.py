"""Unpickling in the confined child, with a joblib file's arrays mapped instead of copied.

joblib writes each array's bytes raw into the pickle stream, aligned to 16 bytes. Given a file
object, `joblib.load` copies them twice (256 KiB reads, then into a new array) into freshly
faulted memory; given a file name it can map them instead, but the child may not open names.
Here the arrays are views of one copy-on-write mapping of the sealed artefact: no copy, and no
new memory unless a page is written. Anything else (compressed files, plain pickles, object or
byte-swapped arrays) is read the way `joblib.load` reads it.
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
from typing import Any, BinaryIO

import joblib
import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

# An uncompressed pickle starts with the PROTO opcode; joblib's compressed files do not.
_PROTO = pickle.PROTO


def is_uncompressed_pickle(fd: int) -> bool:
    """True if the file `fd` starts like a pickle (a joblib file written without compression)."""
    return os.pread(fd, 1, 0) == _PROTO


def load_artefact(fd: int) -> Any:
    """Unpickle the artefact in the file `fd` (closed on return), mapping its arrays when it is
    an uncompressed joblib pickle."""
    size = os.fstat(fd).st_size
    with os.fdopen(fd, "rb") as source:
        if size == 0 or not is_uncompressed_pickle(fd):
            source.seek(0)  # the offset is shared with the loader, which filled the memfd
            return joblib.load(source)
        # Not closed here: the arrays mapped from it keep it open, and it goes with the last.
        return load_mapped(source, mmap.mmap(fd, size, access=mmap.ACCESS_COPY))


def load_mapped(source: BinaryIO, buffer: Any) -> Any:
    """Unpickle the uncompressed pickle in `source`, whose bytes `buffer` also holds (a mapping
    or a bytearray); eligible arrays become views of `buffer`."""
    source.seek(0)
    return _MappingUnpickler(source, buffer).load()


class _MappedArrayWrapper(NumpyArrayWrapper):
    """joblib's array record, read as a view of the unpickler's buffer where it can be."""

    def read(self, unpickler: Any, ensure_native_byte_order: bool) -> Any:
        if isinstance(unpickler, _MappingUnpickler):
            view = unpickler.view_of(self)
            if view is not None:
                return view
        return super().read(unpickler, ensure_native_byte_order)


class _MappingUnpickler(NumpyUnpickler):  # type: ignore[misc]  # joblib is untyped
    def __init__(self, source: BinaryIO, buffer: Any) -> None:
        super().__init__("", source, ensure_native_byte_order=True)
        self._buffer = buffer

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        return _MappedArrayWrapper if found is NumpyArrayWrapper else found

    def view_of(self, wrapper: NumpyArrayWrapper) -> np.ndarray | None:
        """The array `wrapper` describes as a view of the buffer (the file's position moves past
        its bytes, as joblib's own memory-mapped read does), or None to read it by copying."""
        dtype = getattr(wrapper, "dtype", None)
        if not (
            getattr(wrapper, "allow_mmap", False)
            and wrapper.safe_get_numpy_array_alignment_bytes() is not None
            and isinstance(dtype, np.dtype)
            and not dtype.hasobject
            and dtype.isnative
            and getattr(wrapper, "subclass", None) in (np.ndarray, np.memmap)
            and getattr(wrapper, "order", None) in ("C", "F")
        ):
            return None
        shape = tuple(int(n) for n in wrapper.shape)
        padding = self.file_handle.read(1)
        if len(padding) != 1:
            raise pickle.UnpicklingError("the pickle ends where an array's data should be")
        offset = self.file_handle.tell() + padding[0]
        nbytes = math.prod(shape) * dtype.itemsize
        # numpy checks that the array fits in the buffer (TypeError otherwise).
        array = np.ndarray(shape, dtype=dtype, buffer=self._buffer, offset=offset, order=wrapper.order)
        self.file_handle.seek(offset + nbytes)
        return array
