"""CalibratedClassifierCV with sigmoid or isotonic calibrators: one calibrator per predicted column,
every calibrated classifier over the model's classes, calibrators with finite parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from runtime._internal.validators.common import (
    MAX_ESTIMATORS,
    array,
    classes,
    fail,
    has,
    is_classifier,
    one_of,
    state,
)
from runtime._internal.validators.composite import check_nesting

TYPES = (
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.isotonic.IsotonicRegression",
)
# One fold's classifier and its calibrators, and the sigmoid calibrator: only inside the above.
PARTS = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
)
# IsotonicRegression rebuilds its interpolation function `f_` from X_thresholds_ and y_thresholds_
# when loaded (`__setstate__`): checked here through those, never entered by the walk.
DERIVED = {"sklearn.isotonic.IsotonicRegression": ("f_",)}
MAX_THRESHOLDS = 50_000_000


def _isotonic(est: Any) -> None:
    if not has(est, "X_thresholds_"):
        return  # unfitted
    x = array(est, "X_thresholds_", ndim=1, kinds="f")
    array(est, "y_thresholds_", shape=(len(x),), kinds="f")
    if not 1 <= len(x) <= MAX_THRESHOLDS:
        raise fail(est, f"{len(x)} thresholds (1 to {MAX_THRESHOLDS})")
    one_of(est, "out_of_bounds", ("nan", "clip", "raise"))
    one_of(est, "increasing_", (False, True))
    f = state(est, "f_")
    # f_ is what __setstate__ built from the thresholds (a closure for a single one).
    if len(x) > 1 and (type(f).__name__ != "interp1d" or not np.array_equal(np.sort(x), np.asarray(getattr(f, "x", ())), equal_nan=True)):
        raise fail(est, "f_ is not the interpolation of X_thresholds_")
    for name in ("X_min_", "X_max_"):
        if not isinstance(state(est, name), (float, np.floating)):
            raise fail(est, f"{name} is not a number")


def _calibrated(est: Any, owner_classes: np.ndarray) -> None:
    """One fold: its classifier's classes among the model's, one calibrator per column the
    classifier predicts (predict_proba writes column `class_idx` per calibrator)."""
    if type(est).__name__ != "_CalibratedClassifier":
        raise fail(est, "a calibrated classifier is not scikit-learn's _CalibratedClassifier")
    labels = array(est, "classes", ndim=1, kinds="biufUSO")
    if not np.array_equal(labels, owner_classes):
        raise fail(est, "a calibrated classifier's classes disagree with classes_")
    method = one_of(est, "method", ("sigmoid", "isotonic"))
    inner = state(est, "estimator")
    if not isinstance(inner, BaseEstimator) or not is_classifier(inner):
        raise fail(est, "its estimator is not a classifier")
    inner_labels = array(inner, "classes_", ndim=1, kinds="biufUSO")
    if not np.isin(inner_labels, labels).all():
        raise fail(est, "its estimator predicts classes the model does not have")
    calibrators = state(est, "calibrators")
    expected = 1 if len(labels) == 2 else len(inner_labels)
    if not isinstance(calibrators, list) or len(calibrators) != expected:
        raise fail(est, f"{len(calibrators) if isinstance(calibrators, list) else calibrators!r} calibrators for {expected} predicted columns")
    kind = "_SigmoidCalibration" if method == "sigmoid" else "IsotonicRegression"
    for calibrator in calibrators:
        if type(calibrator).__name__ != kind:
            raise fail(est, f"a {method} calibrator is a {type(calibrator).__name__}")
        if kind == "_SigmoidCalibration":
            for name in ("a_", "b_"):
                value = state(calibrator, name)
                if not isinstance(value, (float, np.floating)) or not np.isfinite(value):
                    raise fail(est, f"a sigmoid calibrator's {name} is not a finite number")
        elif not has(calibrator, "X_thresholds_"):
            raise fail(est, "an isotonic calibrator is not fitted")


def validate(est: Any) -> None:
    check_nesting(est)
    if type(est).__name__ == "IsotonicRegression":
        _isotonic(est)
        return
    if not has(est, "calibrated_classifiers_"):
        return
    k = classes(est)
    labels = array(est, "classes_", ndim=1, kinds="biufUSO")
    folds = state(est, "calibrated_classifiers_")
    if not isinstance(folds, list) or not 1 <= len(folds) <= MAX_ESTIMATORS:
        raise fail(est, f"calibrated_classifiers_ must be a list of 1 to {MAX_ESTIMATORS}")
    if k < 2:
        raise fail(est, "it has fewer than two classes")
    for fold in folds:
        _calibrated(fold, labels)
