"""HistGradientBoosting: predictor nodes, categorical bitsets and the bin mapper agree and are in bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

from runtime._internal.validators.common import (
    MAX_ESTIMATORS,
    array,
    classes,
    fail,
    integer,
    is_classifier,
    n_features,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
)
PARTS = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
)


def check_predictor(pred: TreePredictor, width: int, categorical: np.ndarray | None) -> None:
    """Children after parents, features < width, bitset rows in range, categorical splits on categorical
    features (`categorical` None: the predictor alone, checked again by its owner)."""
    nodes = array(pred, "nodes", ndim=1, kinds="V")
    if nodes.dtype != PREDICTOR_RECORD_DTYPE or not 1 <= len(nodes):
        raise fail(pred, "its node array does not have scikit-learn's predictor layout")
    for name in ("raw_left_cat_bitsets", "binned_left_cat_bitsets"):
        bitsets = array(pred, name, shape=(None, 8), kinds="u")
        if bitsets.dtype != np.uint32 or not bitsets.flags.c_contiguous:
            raise fail(pred, f"{name} must be a C-contiguous uint32 array")
    n_bitsets = len(state(pred, "raw_left_cat_bitsets"))
    n = len(nodes)
    idx = np.arange(n)
    inner = nodes["is_leaf"] == 0
    for name in ("left", "right"):
        child = nodes[name].astype(np.int64)
        bad = inner & ((child <= idx) | (child >= n))
        if bad.any():
            raise fail(pred, f"node {int(idx[bad][0])} has an out-of-range {name} child")
    feature = nodes["feature_idx"]
    bad = inner & ((feature < 0) | (feature >= width))
    if bad.any():
        raise fail(pred, f"node {int(idx[bad][0])} splits on a feature outside [0, {width})")
    is_cat = inner & (nodes["is_categorical"] != 0)
    bad = is_cat & (nodes["bitset_idx"].astype(np.int64) >= n_bitsets)
    if bad.any():
        raise fail(pred, f"node {int(idx[bad][0])} names categorical bitset {int(nodes['bitset_idx'][bad][0])} of {n_bitsets}")
    if is_cat.any() and categorical is not None and not categorical[feature[is_cat]].all():
        raise fail(pred, "a categorical split uses a feature the bin mapper does not treat as categorical")


def _internal_width(est: Any, features: int) -> int:
    """Columns the predictors see: the input, or the categorical preprocessor's output."""
    pre = state(est, "_preprocessor")
    if pre is None:
        return features
    if type(pre).__name__ != "ColumnTransformer" or state(pre, "n_features_in_") != features:
        raise fail(est, "_preprocessor is not a ColumnTransformer over the model's features")
    width = 0
    for _, transformer, columns in state(pre, "transformers_"):
        if transformer == "drop":
            continue
        if type(transformer).__name__ not in ("OrdinalEncoder", "FunctionTransformer"):
            raise fail(est, f"_preprocessor holds a {type(transformer).__name__}")
        mask = array(est, "_preprocessor columns", np.asarray(columns), shape=(features,), kinds="b")
        width += int(mask.sum())
    return width


def validate(est: Any) -> None:
    features = n_features(est)
    width = _internal_width(est, features)
    mapper: Any = state(est, "_bin_mapper")
    if type(mapper).__name__ != "_BinMapper":
        raise fail(est, "_bin_mapper is missing")
    categorical = array(mapper, "is_categorical_", shape=(width,), kinds="bu").astype(bool)
    thresholds = state(mapper, "bin_thresholds_")
    if not isinstance(thresholds, list) or len(thresholds) != width:
        raise fail(est, "the bin mapper's thresholds do not cover every feature")
    for f in np.flatnonzero(categorical):
        known = array(mapper, "bin_thresholds_", thresholds[f], ndim=1, kinds="f")
        if known.size and (not np.isfinite(known).all() or known.min() < 0 or known.max() > 255):
            raise fail(est, f"categories of feature {int(f)} are outside [0, 255]")
    per_iteration = integer(est, "n_trees_per_iteration_", 1, MAX_ESTIMATORS)
    if is_classifier(est):
        n_classes = classes(est)
        if per_iteration != (1 if n_classes <= 2 else n_classes):
            raise fail(est, f"{per_iteration} trees per iteration for {n_classes} classes")
    elif per_iteration != 1:
        raise fail(est, "a regressor has one tree per iteration")
    array(est, "_baseline_prediction", shape=(1, per_iteration), kinds="f")
    predictors = state(est, "_predictors")
    if not isinstance(predictors, list) or len(predictors) * per_iteration > MAX_ESTIMATORS:
        raise fail(est, "_predictors is not a bounded list")
    for stage in predictors:
        if not isinstance(stage, list) or len(stage) != per_iteration:
            raise fail(est, f"an iteration does not hold exactly {per_iteration} predictors")
        for pred in stage:
            if not isinstance(pred, TreePredictor):
                raise fail(est, f"a predictor is a {type(pred).__name__}")
            check_predictor(pred, width, categorical)
