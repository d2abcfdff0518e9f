"""Pipeline, ColumnTransformer, FeatureUnion: well-formed steps, in-range columns, bounded nesting."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime._internal.validators.common import (
    MAX_NESTING,
    array,
    fail,
    has,
    in_range,
    n_features,
    optional_n_features,
    state,
)

COMPOSITES = ("Pipeline", "FeatureUnion", "ColumnTransformer")
MAX_STEPS = 1000


def _named(est: Any, name: str, items: Any, width: int) -> list[Any]:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_STEPS:
        raise fail(est, f"{name} must be a list of 1 to {MAX_STEPS} steps")
    for item in items:
        if not isinstance(item, tuple) or len(item) != width or not isinstance(item[0], str):
            raise fail(est, f"{name} holds a malformed step {type(item).__name__}")
    return items


def _columns(est: Any, columns: Any, features: int | None) -> None:
    if isinstance(columns, slice):
        for bound in (columns.start, columns.stop, columns.step):
            if bound is not None and not isinstance(bound, int):
                raise fail(est, "a column slice holds a non-integer")
        return
    if isinstance(columns, (str, int)):
        columns = [columns]
    if isinstance(columns, list):
        if all(isinstance(c, str) for c in columns):
            return
        columns = np.asarray(columns)
    values = array(est, "transformer columns", columns, ndim=1, kinds="biuU")
    if values.dtype.kind == "U" or features is None:
        return
    if values.dtype.kind == "b":
        if len(values) != features:
            raise fail(est, f"a column mask has {len(values)} entries for {features} features")
    else:
        in_range(est, "transformer columns", values, -features, features)


def _input_indices(est: Any) -> dict[Any, Any]:
    found = state(est, "_transformer_to_input_indices", {})
    if not isinstance(found, dict):
        raise fail(est, "_transformer_to_input_indices is not a dict")
    return found


def nesting(est: Any, depth: int = 0) -> int:
    """How deep composites nest inside `est` (0 for a plain estimator); refuse past MAX_NESTING."""
    if type(est).__name__ not in COMPOSITES:
        return 0
    if depth >= MAX_NESTING:
        raise fail(est, f"composites nest deeper than {MAX_NESTING} levels")
    return 1 + max((nesting(child, depth + 1) for child in children(est)), default=0)


def children(est: Any) -> list[Any]:
    name = type(est).__name__
    if name == "Pipeline":
        return [s[1] for s in _named(est, "steps", state(est, "steps"), 2)]
    if name == "FeatureUnion":
        return [t[1] for t in _named(est, "transformer_list", state(est, "transformer_list"), 2)]
    return [t[1] for t in _named(est, "transformers_", state(est, "transformers_"), 3)] if has(est, "transformers_") else []


def validate(est: Any) -> None:
    name = type(est).__name__
    if state(est, "memory") is not None:
        raise fail(est, "memory names a cache location; it must be None")
    if name == "Pipeline":
        steps = _named(est, "steps", state(est, "steps"), 2)
        if any(isinstance(s[1], str) and s[1] != "passthrough" for s in steps):
            raise fail(est, "a pipeline step is a string other than 'passthrough'")
    elif name == "FeatureUnion":
        _named(est, "transformer_list", state(est, "transformer_list"), 2)
        weights = state(est, "transformer_weights")
        if weights is not None and not (isinstance(weights, dict) and all(isinstance(w, (int, float)) for w in weights.values())):
            raise fail(est, "transformer_weights must map names to numbers")
    elif has(est, "transformers_"):
        features = n_features(est)
        for _, transformer, columns in _named(est, "transformers_", state(est, "transformers_"), 3):
            if isinstance(transformer, str) and transformer not in ("drop", "passthrough"):
                raise fail(est, f"transformer {transformer!r} is not accepted")
            _columns(est, columns, features)
        for key, cols in _input_indices(est).items():
            _columns(est, cols, features) if isinstance(key, str) else None
        remainder = state(est, "_remainder")
        if remainder is not None:
            _columns(est, remainder[2], features)
    optional_n_features(est)
    nesting(est)
