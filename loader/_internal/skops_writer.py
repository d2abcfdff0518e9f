"""Write a model's skops archive straight into the result file, in the confined child.

`skops.io.dump` builds the archive in memory twice (each array through `np.save` into a
BytesIO, then the whole zip into another BytesIO) before writing it out: three passes over a
large model's bytes, each into freshly faulted memory. This writes the same archive (skops'
own state functions, schema and member names) with each array streamed into its zip member
and the zip written straight into the file: one pass. Nothing here is trusted: the runtime
pre-scans, allowlists and validates whatever the child wrote (runtime/safe_load.py).
"""

from __future__ import annotations

import json
import zipfile
from typing import Any, BinaryIO

import numpy as np
import skops
from numpy.lib import format as npy_format
from skops.io._numpy import ndarray_get_state
from skops.io._utils import SaveContext, _get_state, get_module, get_state

# zipfile needs to know before the first byte whether a member needs 64-bit sizes.
_ZIP64_FROM = 1 << 31


def _ndarray_state(obj: Any, save_context: SaveContext) -> dict[str, Any]:
    # Scalars and object arrays keep skops' own path (the latter become JSON, not .npy).
    if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
        return ndarray_get_state(obj, save_context)
    state = {"__class__": obj.__class__.__name__, "__module__": get_module(type(obj)), "__loader__": "NdArrayNode"}
    # As skops does: the memo keeps the object alive, so its id names one member only.
    name = f"{save_context.memoize(obj)}.npy"
    if name not in save_context.zip_file.namelist():
        with save_context.zip_file.open(name, "w", force_zip64=obj.nbytes >= _ZIP64_FROM) as member:
            _write_npy(member, obj)
    state.update(type="numpy", file=name)
    return state


def _write_npy(member: BinaryIO, array: np.ndarray) -> None:
    """The array in `.npy` format, as `np.save` writes it; a C-ordered array goes out straight
    from its own memory rather than through numpy's 16 MiB copies."""
    if array.flags.c_contiguous:
        try:
            npy_format.write_array_header_1_0(member, npy_format.header_data_from_array_1_0(array))
        except ValueError:
            pass  # a header too large for format 1.0: numpy picks the version
        else:
            member.write(array.reshape(-1).view(np.uint8).data)
            return
    npy_format.write_array(member, array, allow_pickle=False)


def dump(model: Any, sink: BinaryIO) -> None:
    """Write `model` as an uncompressed skops archive into the seekable file `sink`."""
    # This process is one child's (or the fork server's): never restored. Registered once:
    # each registration empties singledispatch's cache, and the next walk rebuilds it.
    if _get_state.dispatch(np.ndarray) is not _ndarray_state:
        _get_state.register(np.ndarray)(_ndarray_state)
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        context = SaveContext(zip_file=archive)
        state = get_state(model, context)
        context.clear_memo()
        state["protocol"] = context.protocol
        state["_skops_version"] = skops.__version__
        # Compact: json's C encoder (skops' indent=2 takes the pure-Python one, several ms).
        archive.writestr("schema.json", json.dumps(state, separators=(",", ":")))
