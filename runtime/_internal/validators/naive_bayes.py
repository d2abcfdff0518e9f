"""Naive Bayes: per-class parameter arrays agree with classes_ and n_features_in_."""

from __future__ import annotations

from typing import Any

from runtime._internal.validators.common import (
    array,
    classes,
    fail,
    integer,
    n_features,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.naive_bayes.MultinomialNB",
    "sklearn.naive_bayes.BernoulliNB",
    "sklearn.naive_bayes.ComplementNB",
    "sklearn.naive_bayes.CategoricalNB",
)


def validate(est: Any) -> None:
    features = n_features(est)
    k = classes(est)
    name = type(est).__name__
    if name == "GaussianNB":
        array(est, "theta_", shape=(k, features), kinds="f")
        array(est, "var_", shape=(k, features), kinds="f")
        array(est, "class_prior_", shape=(k,), kinds="f")
        return
    array(est, "class_log_prior_", shape=(k,), kinds="f")
    if name != "CategoricalNB":
        array(est, "feature_log_prob_", shape=(k, features), kinds="f")
        return
    n_categories = array(est, "n_categories_", shape=(features,), kinds="iu")
    tables = state(est, "feature_log_prob_")
    if not isinstance(tables, list) or len(tables) != features:
        raise fail(est, "feature_log_prob_ must hold one table per feature")
    for i, table in enumerate(tables):
        array(est, f"feature_log_prob_[{i}]", table, shape=(k, integer(est, "n_categories_", 1, 1 << 24, n_categories[i])), kinds="f")
