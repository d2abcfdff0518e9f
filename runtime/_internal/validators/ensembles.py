"""Voting, stacking, bagging, AdaBoost and isolation forests: members, weights, feature subsets
and class encodings agree, so every index predict takes from one member into another is in range.

Members are validated by their own families (the walk reaches them); here only how the ensemble
combines them."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from runtime._internal.validators.common import (
    MAX_ESTIMATORS,
    MAX_FEATURES,
    array,
    classes,
    fail,
    has,
    in_range,
    integer,
    is_classifier,
    n_features,
    one_of,
    state,
)
from runtime._internal.validators.composite import check_nesting

TYPES = (
    "sklearn.ensemble._voting.VotingClassifier",
    "sklearn.ensemble._voting.VotingRegressor",
    "sklearn.ensemble._stacking.StackingClassifier",
    "sklearn.ensemble._stacking.StackingRegressor",
    "sklearn.ensemble._bagging.BaggingClassifier",
    "sklearn.ensemble._bagging.BaggingRegressor",
    "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.ensemble._weight_boosting.AdaBoostRegressor",
    "sklearn.ensemble._iforest.IsolationForest",
)
CHECK_UNFITTED = True  # an unfitted ensemble (a search's template) is recognised below
STACK_METHODS = ("predict", "predict_proba", "decision_function")


def members(est: Any, name: str = "estimators_", *, drop: bool = False) -> list[Any]:
    """A bounded list of fitted estimators (or "drop" where `drop`)."""
    found = state(est, name)
    if not isinstance(found, list) or not 1 <= len(found) <= MAX_ESTIMATORS:
        raise fail(est, f"{name} must be a list of 1 to {MAX_ESTIMATORS} estimators")
    for member in found:
        if not (isinstance(member, BaseEstimator) or (drop and member == "drop")):
            raise fail(est, f"{name} holds a {type(member).__name__}, not an estimator")
    return found


def _encoded_classes(est: Any, member: Any, k: int) -> None:
    """A member fit on the ensemble's encoded labels predicts exactly 0..k-1 (a hard vote counts
    them with bincount: a label of 10**9 allocates 10**9 counters per row)."""
    labels = array(member, "classes_", ndim=1, kinds="iu")
    if not np.array_equal(labels, np.arange(k)):
        raise fail(est, f"a {type(member).__name__} member's classes_ are not the {k} encoded classes 0..{k - 1}")


def _weights(est: Any, count: int) -> None:
    weights = state(est, "weights")
    if weights is None:
        return
    values = array(est, "weights", np.asarray(weights) if isinstance(weights, list) else weights, shape=(count,), kinds="iuf")
    if not np.isfinite(values).all():
        raise fail(est, "weights are not finite numbers")


def _declared(est: Any) -> list[Any]:
    """The `estimators` parameter: (name, estimator or "drop") pairs."""
    declared = state(est, "estimators")
    if not isinstance(declared, list) or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in declared):
        raise fail(est, "estimators must be a list of (name, estimator) pairs")
    return declared


def _voting(est: Any) -> None:
    fitted = members(est)
    kept = [p for p in _declared(est) if not (isinstance(p[1], str) and p[1] == "drop")]
    if len(kept) != len(fitted):
        raise fail(est, f"{len(fitted)} fitted members for {len(kept)} declared ones")
    _weights(est, len(fitted))
    if is_classifier(est):
        k = classes(est)
        encoder = state(est, "le_")
        if type(encoder).__name__ != "LabelEncoder" or classes(encoder) != k:
            raise fail(est, "le_ disagrees with classes_")
        one_of(est, "voting", ("hard", "soft"))
        for member in fitted:
            if not is_classifier(member):
                raise fail(est, f"a member is a {type(member).__name__}, not a classifier")
            _encoded_classes(est, member, k)
    elif any(is_classifier(m) for m in fitted):
        raise fail(est, "a regressor's member is a classifier")


def _width(member: Any, method: str, k: int) -> int:
    """Columns one member contributes to the final estimator's input."""
    if method == "predict" or not is_classifier(member):
        outputs = state(member, "n_outputs_", 1)
        return outputs if isinstance(outputs, int) and outputs > 1 else 1
    return 1 if k == 2 else k


def _stacking(est: Any) -> None:
    fitted = members(est, drop=True)
    methods = state(est, "stack_method_")
    if not isinstance(methods, list) or len(methods) != len(fitted):
        raise fail(est, "stack_method_ does not name one method per member")
    final = state(est, "final_estimator_")
    if not isinstance(final, BaseEstimator):
        raise fail(est, "final_estimator_ is not an estimator")
    k = 0
    if is_classifier(est):
        k = classes(est)
        encoder = state(est, "_label_encoder")
        if type(encoder).__name__ != "LabelEncoder" or classes(encoder) != k:
            raise fail(est, "_label_encoder disagrees with classes_")
        if not is_classifier(final):
            raise fail(est, "final_estimator_ is not a classifier")
        _encoded_classes(est, final, k)
    width = 0
    for member, method in zip(fitted, methods, strict=True):
        if isinstance(member, str):
            if method != "drop":
                raise fail(est, "a dropped member has a stack method")
            continue
        if method not in STACK_METHODS:
            raise fail(est, f"stack method {method!r} is not one of {list(STACK_METHODS)}")
        if is_classifier(member) != is_classifier(est):
            raise fail(est, f"a member is a {type(member).__name__}")
        if k:
            _encoded_classes(est, member, k)
        width += _width(member, method, k)
    if one_of(est, "passthrough", (False, True)):
        # the input itself, as wide as every member takes it (n_features_in_ is a property here)
        widths = {state(m, "n_features_in_") for m in fitted if not isinstance(m, str)}
        if len(widths) != 1:
            raise fail(est, f"members take different numbers of features {sorted(map(repr, widths))}")
        width += integer(est, "members' n_features_in_", 1, MAX_FEATURES, widths.pop())
    stated = state(final, "n_features_in_")
    if stated is not None and stated != width:
        raise fail(est, f"final_estimator_ takes {stated} features; its members give {width}")


def _feature_subsets(est: Any, fitted: list[Any], features: int) -> int:
    """One in-range feature index array per member, each of `_max_features` entries."""
    subsets = state(est, "estimators_features_")
    if not isinstance(subsets, list) or len(subsets) != len(fitted):
        raise fail(est, f"estimators_features_ does not hold one feature subset per member ({len(fitted)})")
    width = integer(est, "_max_features", 1, features)
    for i, subset in enumerate(subsets):
        values = array(est, f"estimators_features_[{i}]", subset, shape=(width,), kinds="iu")
        in_range(est, f"estimators_features_[{i}]", values, 0, features)
    return width


def _member_width(est: Any, member: Any, width: int) -> None:
    if state(member, "n_features_in_") != width:
        raise fail(est, f"a member takes {state(member, 'n_features_in_')!r} features; it is given {width}")


def _bagging(est: Any) -> None:
    features = n_features(est)
    fitted = members(est)
    width = _feature_subsets(est, fitted, features)
    for member in fitted:
        _member_width(est, member, width)
    if is_classifier(est):
        k = classes(est)
        integer(est, "n_classes_", k, k)
        for member in fitted:
            # predict_proba adds each member's columns at proba[:, member.classes_]
            labels = array(member, "classes_", ndim=1, kinds="iu")
            in_range(est, "a member's classes_", labels, 0, k)


def _adaboost(est: Any) -> None:
    features = n_features(est)
    fitted = members(est)
    for member in fitted:
        _member_width(est, member, features)
    weights = array(est, "estimator_weights_", ndim=1, kinds="f")
    if len(weights) < len(fitted) or not np.isfinite(weights).all():
        raise fail(est, f"estimator_weights_ has {len(weights)} finite weights for {len(fitted)} members")
    if is_classifier(est):
        k = classes(est)
        if k < 2:
            raise fail(est, "it has fewer than two classes")
        integer(est, "n_classes_", k, k)
        for member in fitted:
            if state(member, "classes_") is None or classes(member) > k:
                raise fail(est, "a member has more classes than the ensemble")
    else:
        one_of(est, "loss", ("linear", "square", "exponential"))


def _isolation_forest(est: Any) -> None:
    """Trees are applied to the request without input checks (`check_input=False`): each must
    split exactly the columns it is given."""
    features = n_features(est)
    fitted = members(est)
    width = _feature_subsets(est, fitted, features)
    for member in fitted:
        if type(member).__name__ != "ExtraTreeRegressor":
            raise fail(est, f"a member is a {type(member).__name__}, not an ExtraTreeRegressor")
        _member_width(est, member, width)
    integer(est, "_max_samples", 1, 1 << 40)
    for name in ("_decision_path_lengths", "_average_path_length_per_tree"):
        per_tree = state(est, name)
        if not isinstance(per_tree, (tuple, list)) or len(per_tree) != len(fitted):
            raise fail(est, f"{name} does not hold one array per tree")
        for i, (member, lengths) in enumerate(zip(fitted, per_tree, strict=True)):
            nodes = int(state(member, "tree_").node_count)
            array(est, f"{name}[{i}]", lengths, shape=(nodes,), kinds="iuf")
    offset = state(est, "offset_")
    if not isinstance(offset, (float, np.floating)):
        raise fail(est, "offset_ is not a number")


def validate(est: Any) -> None:
    check_nesting(est)
    if not has(est, "estimators_"):
        return  # an unfitted template (predict refuses to run it)
    name = type(est).__name__
    if name.startswith("Voting"):
        _voting(est)
    elif name.startswith("Stacking"):
        _stacking(est)
    elif name.startswith("Bagging"):
        _bagging(est)
    elif name.startswith("AdaBoost"):
        _adaboost(est)
    else:
        _isolation_forest(est)
