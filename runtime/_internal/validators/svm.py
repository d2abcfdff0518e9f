"""SVC/SVR/NuSVC/NuSVR: the arrays libsvm trusts at predict time agree exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime._internal.validators.common import (
    array,
    classes,
    fail,
    in_range,
    integer,
    is_classifier,
    n_features,
    one_of,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.svm._classes.SVC",
    "sklearn.svm._classes.SVR",
    "sklearn.svm._classes.NuSVC",
    "sklearn.svm._classes.NuSVR",
)


def validate(est: Any) -> None:
    features = n_features(est)
    one_of(est, "kernel", ("linear", "poly", "rbf", "sigmoid"))
    one_of(est, "_sparse", (False,))
    integer(est, "fit_status_", 0, 0)
    integer(est, "degree", 0, 100)
    gamma = state(est, "_gamma")
    if not isinstance(gamma, (float, np.floating)) or not np.isfinite(gamma):
        raise fail(est, "_gamma is not a finite number")
    vectors = array(est, "support_vectors_", shape=(None, features), kinds="f")
    if vectors.dtype != np.float64 or not vectors.flags.c_contiguous:
        raise fail(est, "support_vectors_ must be C-contiguous float64")
    n_sv = len(vectors)
    fitted = array(est, "shape_fit_", value=np.asarray(state(est, "shape_fit_")), shape=(2,), kinds="iu")
    if int(fitted[1]) != features:
        raise fail(est, f"shape_fit_ {tuple(fitted)} disagrees with n_features_in_ {features}")
    support = array(est, "support_", shape=(n_sv,), kinds="i")
    in_range(est, "support_", support, 0, max(int(fitted[0]), 1))
    n_support = array(est, "_n_support", ndim=1, kinds="i")
    if n_support.dtype != np.int32 or (n_support < 0).any():
        raise fail(est, "_n_support must hold non-negative int32 counts")
    if is_classifier(est):
        n_classes = classes(est)
        if n_classes < 2 or len(n_support) != n_classes or int(n_support.sum()) != n_sv:
            raise fail(est, f"_n_support {n_support.tolist()[:10]} disagrees with {n_classes} classes and {n_sv} support vectors")
        pairs = n_classes * (n_classes - 1) // 2
        array(est, "_dual_coef_", shape=(n_classes - 1, n_sv), kinds="f")
        array(est, "class_weight_", shape=(n_classes,), kinds="f")
        one_of(est, "decision_function_shape", ("ovr", "ovo"))
    else:
        if len(n_support) != 2 or int(n_support.max()) > n_sv:
            raise fail(est, f"a regressor's _n_support {n_support.tolist()[:10]} must be two counts of at most {n_sv}")
        pairs = 1
        array(est, "_dual_coef_", shape=(1, n_sv), kinds="f")
    if n_sv < 1:
        raise fail(est, "it has no support vectors")
    array(est, "_intercept_", shape=(pairs,), kinds="f")
    for name in ("_probA", "_probB"):
        prob = array(est, name, ndim=1, kinds="f")
        if len(prob) not in (0, pairs):
            raise fail(est, f"{name} has {len(prob)} entries, expected 0 or {pairs}")
    if len(state(est, "_probA")) != len(state(est, "_probB")):
        raise fail(est, "_probA and _probB differ in length")
