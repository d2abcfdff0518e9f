"""The archive pre-scan refuses what skops would mis-handle, before skops parses anything."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.preprocessing import StandardScaler

from runtime._internal.prescan import MAX_DEPTH, scan_archive
from runtime.errors import ModelRefused
from tests.crafted import X, add_attribute, json_node, rewrite

SCALER = skops.io.dumps(StandardScaler().fit(X))


def _list(items: list[dict[str, Any]], node_id: int) -> dict[str, Any]:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": items, "__id__": node_id}


def _with_attr(value: dict[str, Any], members: dict[str, bytes] | None = None) -> bytes:
    return rewrite(SCALER, lambda schema: add_attribute(schema, "extra_", value), members)


def test_an_honest_dump_is_scanned_and_its_types_collected() -> None:
    scan = scan_archive(SCALER)
    assert "sklearn.preprocessing._data.StandardScaler" in scan.types
    assert scan.array_bytes > 0


def test_nesting_past_the_cap_is_refused_without_recursion_errors() -> None:
    node: dict[str, Any] = json_node(0, 1)
    for level in range(MAX_DEPTH + 5):
        node = _list([node], 10 + level)
    with pytest.raises(ModelRefused, match="nests deeper than"):
        scan_archive(_with_attr(node))


def test_a_shared_reference_to_an_enclosing_node_is_refused() -> None:
    cycle = _list([{"__class__": None, "__module__": None, "__loader__": "CachedNode", "__id__": 4242}], 4242)
    with pytest.raises(ModelRefused, match="enclosing or unknown node"):
        scan_archive(_with_attr(cycle))


def test_an_id_repeated_with_different_content_counts_at_its_first_size() -> None:
    first = _list([json_node(i, 500 + i) for i in range(3)], 4343)
    stub = _list([], 4343)
    alone = scan_archive(_with_attr(_list([first], 4444))).nodes
    # skops audits the stub as the full first definition: a list node and its three items.
    assert scan_archive(_with_attr(_list([first, stub], 4444))).nodes == alone + 4


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _array(name: str) -> dict[str, Any]:
    return {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy", "file": name, "__id__": 6060}


def test_an_array_header_declaring_more_than_its_member_holds_is_refused() -> None:
    truncated = bytes(_npy(np.zeros(10**6))[:200])
    with pytest.raises(ModelRefused, match="declares 8000000 bytes of data"):
        scan_archive(_with_attr(_array("short.npy"), {"short.npy": truncated}))


def test_object_arrays_and_functions_are_refused() -> None:
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(127) + b"\n"
    with pytest.raises(ModelRefused, match="object dtype"):
        scan_archive(_with_attr(_array("objects.npy"), {"objects.npy": header + b"\0" * 8}))
    function = {"__class__": "system", "__module__": "posix", "__loader__": "FunctionNode", "__id__": 7070}
    with pytest.raises(ModelRefused, match="holds the function posix.system"):
        scan_archive(_with_attr(function))


def test_node_kinds_no_allowlisted_estimator_needs_are_refused() -> None:
    method = {"__class__": "method", "__module__": "builtins", "__loader__": "MethodNode", "content": {}, "__id__": 8080}
    with pytest.raises(ModelRefused, match="node kind 'MethodNode'"):
        scan_archive(_with_attr(method))
