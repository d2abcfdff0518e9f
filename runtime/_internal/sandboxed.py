"""The MLServer side of a model served in the sandbox: plain arrays out, checked arrays back.

A model the server cannot validate runs in a confined worker of the loader. What MLServer's
codecs decoded (an ndarray, or a DataFrame) is sent as plain arrays (`loader.v1.Array`);
the answer is parsed here from raw bytes as untrusted data: a dtype from the contract's fixed
list (`loader.contract.array_itemsize`), as many rows as the request, bytes that match the shape,
at most `max_bytes`. No pickle and no object dtype ever comes back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loader.contract import array_itemsize, array_shape
from loader.proto.v1 import loader_pb2
from runtime.errors import PredictFailed

_NUMERIC_KINDS = "biuf"


def encode_inputs(decoded: Any) -> tuple[list[loader_pb2.Array], bool, int]:
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


def _array(name: str, values: np.ndarray) -> loader_pb2.Array:
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
    return loader_pb2.Array(name=name, dtype=values.dtype.str, shape=values.shape, data=values.tobytes(), object=is_object)


def parse_output(array: loader_pb2.Array, rows: int, max_bytes: int) -> np.ndarray:
    """The worker's answer as an ndarray, or PredictFailed (502) naming what is wrong with it."""
    size = array_itemsize(array.dtype)
    if size is None:
        raise PredictFailed(f"the sandboxed model answered with dtype {array.dtype[:40]!r}, which is not accepted", 502)
    shape = array_shape(list(array.shape))
    if shape is None:
        raise PredictFailed(f"the sandboxed model answered with a malformed shape {list(array.shape)[:8]}", 502)
    if shape[0] != rows:
        raise PredictFailed(f"the sandboxed model answered {shape[0]} rows for a request of {rows}", 502)
    count = 1
    for n in shape:
        count *= n
    if count * size > max_bytes:
        raise PredictFailed(f"the sandboxed model's answer is {count * size} bytes, over the limit of {max_bytes}", 502)
    if len(array.data) != count * size:
        raise PredictFailed("the sandboxed model's answer does not hold as many bytes as its shape says", 502)
    values = np.frombuffer(array.data, dtype=np.dtype(array.dtype)).reshape(shape)
    if array.object and values.dtype.kind in "US":
        try:
            # The model answered with Python strings (object dtype): the codecs get them as such.
            return values.astype(object)
        except (UnicodeError, ValueError) as exc:
            raise PredictFailed(f"the sandboxed model answered with invalid strings: {exc}", 502) from None
    return values
