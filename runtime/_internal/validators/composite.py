"""Pipeline, ColumnTransformer, FeatureUnion: well-formed steps, in-range columns, bounded nesting."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

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

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.compose._column_transformer.ColumnTransformer",
)

COMPOSITES = ("Pipeline", "FeatureUnion", "ColumnTransformer")
# Composites and meta-estimators, which call other estimators: their nesting is bounded.
NESTING = (
    *COMPOSITES, "VotingClassifier", "VotingRegressor", "StackingClassifier", "StackingRegressor",
    "BaggingClassifier", "BaggingRegressor", "AdaBoostClassifier", "AdaBoostRegressor", "IsolationForest",
    "CalibratedClassifierCV", "TransformedTargetRegressor", "GridSearchCV", "RandomizedSearchCV",
)
_MEMBER_ATTRS = ("final_estimator_", "regressor_", "transformer_", "best_estimator_")
MAX_USES = 100_000
CHECK_UNFITTED = True
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


def measure(est: Any, depth: int = 0, memo: dict[int, tuple[int, int]] | None = None) -> tuple[int, int]:
    """(nesting height, estimator calls per prediction) of `est`; composites and meta-estimators
    nest at most MAX_NESTING deep, and a member shared by several owners counts once per owner
    (a list of one shared sub-ensemble, nested, multiplies the work of each request while the
    archive stays small). Each object is measured once."""
    memo = {} if memo is None else memo
    if type(est).__name__ not in NESTING:
        return 0, 1
    if depth >= MAX_NESTING:
        raise fail(est, f"composites nest deeper than {MAX_NESTING} levels")
    if id(est) not in memo:
        height, calls = 0, 1
        for child in children(est):
            child_height, child_calls = measure(child, depth + 1, memo)
            height, calls = max(height, child_height), calls + child_calls
            if calls > MAX_USES:
                raise fail(est, f"one prediction would call more than {MAX_USES} estimators")
        memo[id(est)] = (height + 1, calls)
    if depth + memo[id(est)][0] > MAX_NESTING:
        raise fail(est, f"composites nest deeper than {MAX_NESTING} levels")
    return memo[id(est)]


def children(est: Any) -> list[Any]:
    """The fitted estimators `est` calls at predict (for composites and meta-estimators)."""
    name = type(est).__name__
    if name == "Pipeline":
        found = [s[1] for s in _named(est, "steps", state(est, "steps"), 2)]
    elif name == "FeatureUnion":
        found = [t[1] for t in _named(est, "transformer_list", state(est, "transformer_list"), 2)]
    elif name == "ColumnTransformer":
        found = [t[1] for t in _named(est, "transformers_", state(est, "transformers_"), 3)] if has(est, "transformers_") else []
    elif name == "CalibratedClassifierCV":
        folds = state(est, "calibrated_classifiers_", [])
        found = [state(fold, "estimator") for fold in folds] if isinstance(folds, list) else []
    else:
        found = [state(est, attr) for attr in _MEMBER_ATTRS]
        found = [*found, *(m for attr in ("estimators_",) if isinstance(state(est, attr), list) for m in state(est, attr))]
    return [child for child in found if isinstance(child, BaseEstimator)]


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
    check_nesting(est)


def check_nesting(est: Any) -> None:
    """Bounded nesting and bounded calls per prediction (composites and meta-estimators)."""
    measure(est)
