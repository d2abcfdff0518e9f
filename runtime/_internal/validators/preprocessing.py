"""Scalers, encoders, imputers, PCA, polynomial features, label codecs, dummies and the one accepted
FunctionTransformer (HistGradientBoosting's partial(check_array))."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from sklearn.utils.validation import check_array

from runtime._internal.validators.common import array, classes, fail, integer, n_features, one_of, optional_n_features

MAX_POLYNOMIAL_OUTPUTS = 1_000_000
_PER_FEATURE = {
    "StandardScaler": ("mean_", "var_", "scale_"),
    "MinMaxScaler": ("min_", "scale_", "data_min_", "data_max_", "data_range_"),
    "MaxAbsScaler": ("max_abs_", "scale_"),
    "RobustScaler": ("center_", "scale_"),
    "SimpleImputer": ("statistics_",),
}
CHECK_ARRAY_KEYWORDS = frozenset({"dtype", "ensure_all_finite", "accept_sparse"})


def check_partial(owner: Any, func: Any) -> None:
    """Only functools.partial(check_array, dtype=..., ensure_all_finite=...) is accepted as a function."""
    if not isinstance(func, functools.partial) or func.func is not check_array or func.args:
        raise fail(owner, f"function {func!r} is not accepted")
    if set(func.keywords) - CHECK_ARRAY_KEYWORDS:
        raise fail(owner, f"check_array keywords {sorted(func.keywords)} are not accepted")


def _encoder(est: Any, features: int) -> None:
    categories = getattr(est, "categories_", None)
    if not isinstance(categories, list) or len(categories) != features:
        raise fail(est, "categories_ must hold one array per feature")
    for i, cats in enumerate(categories):
        array(est, f"categories_[{i}]", cats, ndim=1, kinds="biufUSO")
    if type(est).__name__ == "OneHotEncoder":
        drop = getattr(est, "drop_idx_", None)
        if drop is not None:
            drop = array(est, "drop_idx_", shape=(features,), kinds="iuO")
        stored = getattr(est, "_n_features_outs", None)
        if stored != est._compute_n_features_outs():
            raise fail(est, "_n_features_outs disagrees with categories_")
        _onehot_columns(est, categories, stored)


def _onehot_columns(est: Any, categories: list[Any], outs: list[int]) -> None:
    """Every category index transform can emit (after infrequent grouping and drop) stays inside
    its feature's output columns: otherwise the sparse result holds out-of-range indices."""
    mappings = getattr(est, "_default_to_infrequent_mappings", None) if est._infrequent_enabled else None
    drop = getattr(est, "_drop_idx_after_grouping", None)
    if mappings is not None and (not isinstance(mappings, list) or len(mappings) != len(categories)):
        raise fail(est, "infrequent-category mappings do not cover every feature")
    if drop is not None:
        drop = array(est, "_drop_idx_after_grouping", shape=(len(categories),), kinds="iuO")
    for i, cats in enumerate(categories):
        values = np.arange(len(cats))
        if mappings is not None and mappings[i] is not None:
            values = array(est, f"_default_to_infrequent_mappings[{i}]", mappings[i], shape=(len(cats),), kinds="iu").astype(np.int64)
        if drop is not None and drop[i] is not None:
            dropped = int(drop[i])
            values = values[values != dropped]
            values = np.where(values > dropped, values - 1, values)
        if values.size and (int(values.min()) < 0 or int(values.max()) >= outs[i]):
            raise fail(est, f"feature {i} maps categories outside its {outs[i]} output columns")


def validate(est: Any) -> None:
    name = type(est).__name__
    if name in _PER_FEATURE:
        features = n_features(est)
        for attr in _PER_FEATURE[name]:
            if getattr(est, attr, None) is not None:
                value = getattr(est, attr)
                array(est, attr, shape=(features,), kinds="biufO" if name == "SimpleImputer" else "f")
                del value
        if name == "SimpleImputer":
            one_of(est, "strategy", ("mean", "median", "most_frequent", "constant"))
            if getattr(est, "indicator_", None) is not None:
                raise fail(est, "missing indicators are not accepted")
    elif name == "Normalizer":
        one_of(est, "norm", ("l1", "l2", "max"))
    elif name in ("OneHotEncoder", "OrdinalEncoder"):
        _encoder(est, n_features(est))
    elif name == "LabelEncoder":
        array(est, "classes_", ndim=1, kinds="biufUSO")
    elif name == "LabelBinarizer":
        classes(est)
        one_of(est, "y_type_", ("binary", "multiclass", "multilabel-indicator"))
        one_of(est, "sparse_output", (False,))
    elif name == "PCA":
        features = n_features(est)
        k = integer(est, "n_components_", 1, features)
        array(est, "components_", shape=(k, features), kinds="f")
        array(est, "mean_", shape=(features,), kinds="f")
        array(est, "explained_variance_", shape=(k,), kinds="f")
    elif name == "PolynomialFeatures":
        features = n_features(est)
        integer(est, "degree", 0, 10) if isinstance(est.degree, (int, np.integer)) else None
        outputs = integer(est, "n_output_features_", 1, MAX_POLYNOMIAL_OUTPUTS)
        if est.powers_.shape != (outputs, features):
            raise fail(est, "n_output_features_ disagrees with degree and n_features_in_")
    elif name == "FunctionTransformer":
        check_partial(est, getattr(est, "func", None))
        if est.inverse_func is not None or est.kw_args or est.inv_kw_args or est.feature_names_out is not None:
            raise fail(est, "only a bare partial(check_array) FunctionTransformer is accepted")
    elif name in ("DummyClassifier", "DummyRegressor"):
        optional_n_features(est)
        outputs = integer(est, "n_outputs_", 1, 1 << 16)
        if name == "DummyClassifier":
            one_of(est, "_strategy", ("most_frequent", "prior", "stratified", "uniform", "constant"))
            # predict_proba's width is n_classes_ (uniform, most_frequent, constant): it must be the
            # number of classes, or a boosting model started from it writes past its columns.
            if outputs == 1:
                _dummy_output(est, "", classes(est), None, est.n_classes_)
            else:
                labels, counts, priors = est.classes_, est.n_classes_, est.class_prior_
                if not all(isinstance(v, list) and len(v) == outputs for v in (labels, counts, priors)):
                    raise fail(est, f"classes_, n_classes_ and class_prior_ must each list its {outputs} outputs")
                for i in range(outputs):
                    k = len(array(est, f"classes_[{i}]", labels[i], ndim=1, kinds="biufUSO"))
                    _dummy_output(est, f"[{i}]", k, priors[i], counts[i])


def _dummy_output(est: Any, which: str, k: int, prior: Any, count: Any) -> None:
    """One output of a DummyClassifier: its prior (None: `class_prior_` itself) and its class count
    agree with its k classes."""
    array(est, f"class_prior_{which}", prior, shape=(k,), kinds="f")
    if type(count) not in (int, np.int64) or count != k:
        raise fail(est, f"n_classes_{which} {count!r} is not the {k} classes in classes_{which}")
