"""The runtime's side of the data path to a model served in the sandbox: what it sends, and the
checks on what comes back (crafted answers, as a model that owns its worker could send)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loader.contract import MAX_REPORTED_BYTES, load_header, reported_text
from loader.proto.v1 import loader_pb2
from runtime._internal.sandboxed import encode_inputs, parse_answer, parse_output
from runtime.errors import PredictFailed

MAX = 1 << 20


def answer(values: np.ndarray, **override: object) -> loader_pb2.Array:
    fields: dict[str, object] = {"dtype": values.dtype.str, "shape": values.shape, "data": values.tobytes()}
    fields.update(override)
    return loader_pb2.Array(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("values", [np.arange(6, dtype="<i8"), np.ones((3, 2), "<f4"), np.array([True, False]), np.array(["a", "bc"])])
def test_plain_answers_are_parsed_as_sent(values: np.ndarray) -> None:
    parsed = parse_output(answer(values), len(values), MAX)
    assert parsed.dtype == values.dtype and (parsed == values).all()


def test_strings_that_were_objects_come_back_as_objects() -> None:
    parsed = parse_output(answer(np.array(["x", "yy"]), object=True), 2, MAX)
    assert parsed.dtype == object and parsed.tolist() == ["x", "yy"]


@pytest.mark.parametrize(
    ("crafted", "rows", "words"),
    [
        (answer(np.zeros(2), dtype="|O"), 2, "dtype '|O'"),
        (answer(np.zeros(2), dtype=">f8"), 2, "dtype '>f8'"),
        (answer(np.zeros(2), dtype="<c16"), 2, "dtype '<c16'"),
        (answer(np.zeros(2), dtype="<M8[ns]"), 2, "dtype '<M8[ns]'"),
        (answer(np.zeros(3)), 2, "3 rows for a request of 2"),
        (answer(np.zeros(2), data=b"\0" * 3), 2, "as many bytes as its shape"),
        (answer(np.zeros(2), shape=[]), 2, "malformed shape"),
        (answer(np.zeros(2), shape=[2, 1, 1, 1, 1]), 2, "malformed shape"),
        (answer(np.zeros(2), shape=[2, 1 << 40]), 2, "malformed shape"),
        (answer(np.zeros((2, 1 << 17))), 2, "over the limit"),
        # 2 x 16,384 one-byte strings as objects: 32 KiB of bytes, ~2 MiB as Python objects here.
        (answer(np.full((2, 1 << 14), b"x"), object=True), 2, "strings as Python objects"),
        (answer(np.array(["a", "b"]), data=np.array([0x61, 0xDC80], "<u4").tobytes()), 2, "not valid Unicode"),
        (answer(np.array(["a", "b"]), data=np.array([0x61, 0x110000], "<u4").tobytes()), 2, "not valid Unicode"),
    ],
)
def test_crafted_answers_are_refused(crafted: loader_pb2.Array, rows: int, words: str) -> None:
    with pytest.raises(PredictFailed, match=words.replace("[", r"\[").replace("(", r"\(")) as refused:
        parse_output(crafted, rows, MAX)
    assert refused.value.status_code == 502


def test_a_dataframe_goes_as_named_columns_with_strings_marked() -> None:
    frame = pd.DataFrame({"a": [1.5, 2.5], "n": [1, 2], "op": ["+", "-"]})
    arrays, is_frame, rows = encode_inputs(frame)
    assert is_frame and rows == 2
    assert [(a.name, a.dtype, a.object) for a in arrays] == [("a", "<f8", False), ("n", "<i8", False), ("op", "<U1", True)]


def test_inputs_that_cannot_cross_as_plain_arrays_are_refused_naming_them() -> None:
    with pytest.raises(PredictFailed, match="input op: an object column must hold only strings") as refused:
        encode_inputs(pd.DataFrame({"op": ["+", None]}, dtype=object))
    assert refused.value.status_code == 400
    with pytest.raises(PredictFailed, match="dtype complex128"):
        encode_inputs(np.zeros(2, dtype=complex))
    with pytest.raises(PredictFailed, match="decoded to a list"):
        encode_inputs([1.0, "a"])  # only a list of texts (MLServer's str codec) crosses


def test_a_list_of_texts_crosses_as_an_array_of_texts() -> None:
    arrays, frame, rows = encode_inputs(["alpha beta", "gamma"])
    assert (frame, rows, len(arrays)) == (False, 2, 1)


@pytest.mark.parametrize(
    ("header", "body", "words"),
    [
        ({"ok": True, "dtype": ["<f8"], "shape": [2]}, b"\0" * 16, "which is not accepted"),
        ({"ok": True, "dtype": None, "shape": [2]}, b"\0" * 16, "which is not accepted"),
        ({"ok": True, "dtype": "<f8", "shape": "2"}, b"\0" * 16, "malformed shape"),
        ({"ok": True, "dtype": "<f8", "shape": [2.0]}, b"\0" * 16, "malformed shape"),
        ({"ok": True, "dtype": "<f8", "shape": [True, 2]}, b"\0" * 16, "malformed shape"),
        ({"ok": True, "dtype": "<f8", "shape": [3]}, b"\0" * 24, "3 rows for a request of 2"),
        ({"ok": True, "dtype": "<f8", "shape": [2]}, b"\0" * 17, "as many bytes as its shape"),
        ({"ok": True, "dtype": "<f8", "shape": [2, 1 << 17]}, b"", "over the limit"),
    ],
)
def test_crafted_answers_on_the_direct_channel_are_refused(header: dict, body: bytes, words: str) -> None:
    """The worker's JSON header comes straight to the runtime there: each field's type is checked."""
    with pytest.raises(PredictFailed, match=words) as refused:
        parse_answer(header, body, 2, MAX)
    assert refused.value.status_code == 502


def test_a_plain_answer_on_the_direct_channel_is_parsed_as_sent() -> None:
    values = np.array(["x", "yy"])
    parsed = parse_answer({"ok": True, "dtype": values.dtype.str, "shape": [2], "object": True}, values.tobytes(), 2, MAX)
    assert parsed.dtype == object and parsed.tolist() == ["x", "yy"]


@pytest.mark.parametrize(
    "raw", [b"[" * 60_000, b'{"ok": ' + b"[" * 60_000, b"not json", b"[1, 2]", b"\xff\xfe", b""], ids=["nested", "nested-in-object", "text", "list", "bytes", "empty"]
)
def test_a_header_that_is_not_a_json_object_is_no_header(raw: bytes) -> None:
    """What a confined process sends as a frame's header: nested past the parser's depth it
    raises RecursionError in json (not ValueError), which must be refused like any malformed one."""
    assert load_header(raw) is None


def test_a_json_object_header_is_read() -> None:
    assert load_header(b'{"ok": true, "shape": [2]}') == {"ok": True, "shape": [2]}


def test_text_a_confined_process_reports_is_made_safe_to_pass_on() -> None:
    """An error with a lone surrogate (a non-UTF-8 file name), or long non-ASCII text, broke the
    encoders after it: MLServer's JSON (orjson), gRPC status details (percent-encoded, 8 KiB)."""
    shown = reported_text("bad file caf" + b"\xe9".decode("utf-8", "surrogateescape"))
    assert shown == "bad file caf\\udce9" and shown.encode("utf-8")
    long = reported_text("\u00e9" * 2000)
    assert len(long.encode("utf-8")) <= MAX_REPORTED_BYTES and long == "\u00e9" * (MAX_REPORTED_BYTES // 2)
    assert reported_text(["nested", ["list"]]) == "(a list, not text)"
