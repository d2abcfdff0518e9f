"""The MLServer side of a model served in the sandbox: plain arrays out, checked arrays back.

A model the server cannot validate runs in a confined worker of the loader. What MLServer's
codecs decoded (an ndarray, or a DataFrame) is sent as plain arrays: on the worker's direct
channel (a JSON header and raw buffers, `channel_request`), or as `loader.v1.Array`s through
Predict. The answer is parsed here from raw bytes as untrusted data, whichever way it came (one
parser, `parse_output` / `parse_answer`): a dtype from the contract's fixed list
(`loader.contract.array_itemsize`), as many rows as the request, bytes that match the shape, at
most `max_bytes`. No pickle and no object dtype ever comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loader.contract import array_itemsize, array_shape
from loader.proto.v1 import loader_pb2
from runtime.errors import PredictFailed

_NUMERIC_KINDS = "biuf"
# What an answer of strings as Python objects counts per string against the size cap: a str or
# bytes object costs this process about that much (header and pointer), whatever its length.
_OBJECT_BYTES = 64


@dataclass(frozen=True)
class PlainArray:
    """One input as it crosses: a name (a DataFrame's column), a dtype from the fixed list, a
    shape, the raw bytes, and whether the codec gave Python strings (object dtype)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview
    object: bool


def encode_inputs(decoded: Any) -> tuple[list[PlainArray], bool, int]:
    """(arrays, frame, rows) for what the request decoded to; PredictFailed (400) names an input
    that cannot cross as a plain array."""
    if isinstance(decoded, pd.DataFrame):
        columns = [(str(name), decoded[name].to_numpy()) for name in decoded.columns]
        return [_array(name, values) for name, values in columns], True, len(decoded)
    if isinstance(decoded, list) and decoded and all(isinstance(v, str) for v in decoded):
        # MLServer's str codec gives a list of texts; the worker's model gets them as an array.
        return [_array("", np.asarray(decoded, dtype=object))], False, len(decoded)
    if isinstance(decoded, np.ndarray):
        if decoded.ndim == 0:
            raise PredictFailed("the request decoded to a scalar; send at least one row", 400)
        return [_array("", decoded)], False, int(decoded.shape[0])
    raise PredictFailed(
        f"the request decoded to a {type(decoded).__name__}; a model served in the sandbox takes a NumPy "
        "array or a pandas DataFrame (content_type np or pd)",
        400,
    )


def _array(name: str, values: np.ndarray) -> PlainArray:
    is_object = values.dtype == object
    if is_object:
        if all(isinstance(v, str) for v in values.flat):
            values = values.astype(str)
        elif all(isinstance(v, bytes) for v in values.flat):
            values = values.astype(bytes)
        else:
            raise PredictFailed(
                f"input {name or 'the array'}: an object column must hold only strings (or only bytes) to be "
                "sent to a model served in the sandbox; found other values (missing values?)",
                400,
            )
    if values.dtype.kind in _NUMERIC_KINDS and values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    values = np.ascontiguousarray(values)
    if array_itemsize(values.dtype.str) is None or array_shape(list(values.shape)) is None:
        raise PredictFailed(
            f"input {name or 'the array'}: dtype {values.dtype} with {values.ndim} dimensions cannot be sent to a "
            "model served in the sandbox (numbers, booleans and strings, up to 4 dimensions)",
            400,
        )
    return PlainArray(name, values.dtype.str, tuple(values.shape), values.reshape(-1).view(np.uint8).data, is_object)


def to_proto(arrays: list[PlainArray]) -> list[loader_pb2.Array]:
    """The inputs as Predict's messages (the fallback when there is no direct channel)."""
    return [
        loader_pb2.Array(name=a.name, dtype=a.dtype, shape=a.shape, data=a.data.tobytes(), object=a.object) for a in arrays
    ]


def channel_request(method: str, arrays: list[PlainArray], frame: bool) -> tuple[dict[str, Any], list[memoryview]]:
    """The worker's request header and buffers for `method` on `arrays`, for the direct channel."""
    inputs = [{"name": a.name, "dtype": a.dtype, "shape": list(a.shape), "object": a.object} for a in arrays]
    return {"method": method, "frame": frame, "inputs": inputs}, [a.data for a in arrays]


def parse_output(array: loader_pb2.Array, rows: int, max_bytes: int) -> np.ndarray:
    """Predict's answer as an ndarray, or PredictFailed (502) naming what is wrong with it."""
    return _parse(array.dtype, list(array.shape), array.data, array.object, rows, max_bytes)


def parse_answer(header: dict[str, Any], body: bytes | bytearray, rows: int, max_bytes: int) -> np.ndarray:
    """A successful answer from the direct channel (its JSON header and body) as an ndarray, or
    PredictFailed (502): the header is the worker's, so every field is checked for its type too."""
    return _parse(header.get("dtype"), header.get("shape"), body, header.get("object") is True, rows, max_bytes)


def _parse(dtype: object, raw_shape: object, data: bytes | bytearray, is_object: bool, rows: int, max_bytes: int) -> np.ndarray:
    if not isinstance(dtype, str) or (size := array_itemsize(dtype)) is None:
        raise PredictFailed(f"the sandboxed model answered with dtype {str(dtype)[:40]!r}, which is not accepted", 502)
    shape = array_shape(raw_shape)
    if shape is None:
        shown = list(raw_shape)[:8] if isinstance(raw_shape, (list, tuple)) else str(raw_shape)[:40]
        raise PredictFailed(f"the sandboxed model answered with a malformed shape {shown}", 502)
    if shape[0] != rows:
        raise PredictFailed(f"the sandboxed model answered {shape[0]} rows for a request of {rows}", 502)
    count = 1
    for n in shape:
        count *= n
    if count * size > max_bytes:
        raise PredictFailed(f"the sandboxed model's answer is {count * size} bytes, over the limit of {max_bytes}", 502)
    if is_object and count * _OBJECT_BYTES > max_bytes:
        raise PredictFailed(
            f"the sandboxed model answered {count} strings as Python objects; at {_OBJECT_BYTES} bytes each (what this "
            f"process holds per string) that is over the limit of {max_bytes} bytes",
            502,
        )
    if len(data) != count * size:
        raise PredictFailed("the sandboxed model's answer does not hold as many bytes as its shape says", 502)
    values = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
    if values.dtype.kind == "U" and count and _not_unicode(values):
        raise PredictFailed(
            "the sandboxed model answered with text that is not valid Unicode (a lone surrogate, or a code point "
            "past U+10FFFF), which cannot be encoded for the client",
            502,
        )
    if is_object and values.dtype.kind in "US":
        try:
            # The model answered with Python strings (object dtype): the codecs get them as such.
            return values.astype(object)
        except (UnicodeError, ValueError) as exc:
            raise PredictFailed(f"the sandboxed model answered with invalid strings: {exc}", 502) from None
    return values


def _not_unicode(values: np.ndarray) -> bool:
    """Whether fixed-width text holds a code point UTF-8 cannot encode (a surrogate, or past U+10FFFF)."""
    codes = values.reshape(-1).view(values.dtype.byteorder + "u4")  # "<", ">" or "=": never "|" for text
    return bool(((codes > 0x10FFFF) | ((codes >= 0xD800) & (codes <= 0xDFFF))).any())
