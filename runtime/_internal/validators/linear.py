"""Linear models (incl. SGD, ridge, linear SVM): coefficients agree with features, classes and intercepts."""

from __future__ import annotations

from typing import Any

from runtime._internal.validators.common import (
    array,
    classes,
    fail,
    is_classifier,
    matrix,
    optional_n_features,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn.linear_model._stochastic_gradient.SGDRegressor",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.linear_model._ridge.RidgeCV",  # StackingRegressor's default final estimator
    "sklearn.linear_model._ridge.RidgeClassifierCV",
    "sklearn.linear_model._coordinate_descent.Lasso",
    "sklearn.linear_model._coordinate_descent.ElasticNet",
    "sklearn.linear_model._perceptron.Perceptron",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.svm._classes.LinearSVR",
)
PARTS = tuple(f"sklearn.linear_model._sgd_fast.{n}" for n in (
    "Hinge", "ModifiedHuber", "SquaredHinge", "EpsilonInsensitive", "SquaredEpsilonInsensitive",
))


def validate(est: Any) -> None:
    features = optional_n_features(est)
    coef = state(est, "coef_")
    if coef is None:
        raise fail(est, "coef_ is missing")
    if getattr(coef, "ndim", 2) == 1:
        coef = array(est, "coef_", shape=(features,), kinds="f")
        rows = 1
    else:
        coef = matrix(est, "coef_", (None, features))
        rows = coef.shape[0]
    intercept = state(est, "intercept_")
    if hasattr(intercept, "shape") and getattr(intercept, "ndim", 0) > 0:
        array(est, "intercept_", shape=(rows if getattr(state(est, "coef_"), "ndim", 2) == 2 else 1,), kinds="f")
    if is_classifier(est):
        n_classes = classes(est)
        expected = 1 if n_classes == 2 else n_classes
        if rows != expected and not (n_classes == 2 and rows == 2):
            raise fail(est, f"coef_ has {rows} rows for {n_classes} classes")
