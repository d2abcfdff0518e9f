"""Scalers, encoders, imputers, PCA, polynomial features, label codecs, dummies and the one accepted
FunctionTransformer (HistGradientBoosting's partial(check_array))."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from sklearn.preprocessing import PolynomialFeatures
from sklearn.utils.validation import check_array

from runtime._internal.validators.common import (
    array,
    classes,
    fail,
    integer,
    n_features,
    one_of,
    optional_n_features,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.MaxAbsScaler",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._polynomial.PolynomialFeatures",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.decomposition._pca.PCA",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
)

MAX_POLYNOMIAL_OUTPUTS = 1_000_000
MAX_POLYNOMIAL_DEGREE = 10
_PER_FEATURE = {
    "StandardScaler": ("mean_", "var_", "scale_"),
    "MinMaxScaler": ("min_", "scale_", "data_min_", "data_max_", "data_range_"),
    "MaxAbsScaler": ("max_abs_", "scale_"),
    "RobustScaler": ("center_", "scale_"),
    "SimpleImputer": ("statistics_",),
}
CHECK_ARRAY_KEYWORDS = frozenset({"dtype", "ensure_all_finite", "accept_sparse"})
# NumPy's element-wise functions a FunctionTransformer or TransformedTargetRegressor may apply
# (by name in the numpy namespace; each must be NumPy's own object), with the keyword arguments
# each accepts. Nothing else is called at predict.
ELEMENTWISE: dict[str, frozenset[str]] = {
    **dict.fromkeys((
        "log1p", "expm1", "log", "log2", "log10", "exp", "exp2", "sqrt", "cbrt", "square", "absolute",
        "negative", "sign", "tanh", "arcsinh", "sinh", "reciprocal", "rint", "floor", "ceil",
    ), frozenset()),
    "clip": frozenset({"a_min", "a_max", "min", "max"}),
}
FUNCTIONS = (
    "sklearn.utils.validation.check_array",  # HistGradientBoosting's categorical preprocessor
    *(f"numpy.{name}" for name in ELEMENTWISE),
)
PARTS = ("functools.partial", *FUNCTIONS)


def check_partial(owner: Any, func: Any) -> None:
    """Only functools.partial(check_array, dtype=..., ensure_all_finite=...) is accepted as a partial."""
    if not isinstance(func, functools.partial) or func.func is not check_array or func.args:
        raise fail(owner, f"function {func!r} is not accepted")
    if set(func.keywords) - CHECK_ARRAY_KEYWORDS:
        raise fail(owner, f"check_array keywords {sorted(func.keywords)} are not accepted")


def elementwise(owner: Any, name: str, func: Any, keywords: Any) -> None:
    """`func` (None: identity) is one of NumPy's own element-wise functions, called with
    `keywords` it accepts (numbers only)."""
    if func is None:
        allowed: frozenset[str] = frozenset()
    else:
        found = next((n for n in ELEMENTWISE if getattr(np, n) is func), None)
        if found is None:
            raise fail(owner, f"{name} {func!r} is not one of NumPy's {sorted(ELEMENTWISE)}")
        allowed = ELEMENTWISE[found]
    if keywords is None:
        return
    if type(keywords) is not dict or set(keywords) - allowed:
        raise fail(owner, f"{name} keyword arguments {keywords!r} are not accepted (only {sorted(allowed)})")
    for key, value in keywords.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))):
            raise fail(owner, f"{name} keyword {key} = {value!r} is not a number")


def _function_transformer(est: Any) -> None:
    """Identity (how ColumnTransformer stores "passthrough"), an element-wise NumPy function, or
    HistGradientBoosting's partial(check_array); no callable for feature names."""
    func = state(est, "func")
    if isinstance(func, functools.partial):
        check_partial(est, func)
        if any(state(est, n) for n in ("inverse_func", "kw_args", "inv_kw_args", "feature_names_out")):
            raise fail(est, "only a bare partial(check_array) FunctionTransformer is accepted")
        return
    elementwise(est, "func", func, state(est, "kw_args"))
    elementwise(est, "inverse_func", state(est, "inverse_func"), state(est, "inv_kw_args"))
    one_of(est, "feature_names_out", (None, "one-to-one"))
    for flag in ("validate", "accept_sparse", "check_inverse"):
        one_of(est, flag, (False, True))
    optional_n_features(est)


def _encoder(est: Any, features: int) -> None:
    categories = state(est, "categories_")
    if not isinstance(categories, list) or len(categories) != features:
        raise fail(est, "categories_ must hold one array per feature")
    for i, cats in enumerate(categories):
        array(est, f"categories_[{i}]", cats, ndim=1, kinds="biufUSO")
    if type(est).__name__ == "OneHotEncoder":
        if state(est, "drop_idx_") is not None:
            array(est, "drop_idx_", shape=(features,), kinds="iuO")
        stored = state(est, "_n_features_outs")
        if stored != _onehot_outputs(est, categories):
            raise fail(est, "_n_features_outs disagrees with categories_")
        _onehot_columns(est, categories, stored)


def _onehot_outputs(est: Any, categories: list[Any]) -> list[int]:
    """The output columns per feature, as OneHotEncoder._compute_n_features_outs counts them, from
    stored state only."""
    outputs = [len(cats) for cats in categories]
    drop = state(est, "_drop_idx_after_grouping")
    if drop is not None:
        drop = array(est, "_drop_idx_after_grouping", shape=(len(categories),), kinds="iuO")
        outputs = [n - (d is not None) for n, d in zip(outputs, drop, strict=True)]
    if state(est, "_infrequent_enabled") is not True:
        return outputs
    infrequent = state(est, "_infrequent_indices")
    if not isinstance(infrequent, list) or len(infrequent) != len(categories):
        raise fail(est, "_infrequent_indices does not cover every feature")
    for i, indices in enumerate(infrequent):
        if indices is not None:
            outputs[i] -= array(est, f"_infrequent_indices[{i}]", indices, ndim=1, kinds="iu").size - 1
    return outputs


def _onehot_columns(est: Any, categories: list[Any], outs: list[int]) -> None:
    """Every category index transform can emit (after infrequent grouping and drop) stays inside
    its feature's output columns: otherwise the sparse result holds out-of-range indices."""
    mappings = state(est, "_default_to_infrequent_mappings") if state(est, "_infrequent_enabled") is True else None
    drop = state(est, "_drop_idx_after_grouping")
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
            if state(est, attr) is not None:
                array(est, attr, shape=(features,), kinds="biufO" if name == "SimpleImputer" else "f")
        if name == "SimpleImputer":
            one_of(est, "strategy", ("mean", "median", "most_frequent", "constant"))
            if state(est, "indicator_") is not None:
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
        _polynomial(est)
    elif name == "FunctionTransformer":
        _function_transformer(est)
    elif name in ("DummyClassifier", "DummyRegressor"):
        optional_n_features(est)
        outputs = integer(est, "n_outputs_", 1, 1 << 16)
        if name == "DummyClassifier":
            one_of(est, "_strategy", ("most_frequent", "prior", "stratified", "uniform", "constant"))
            # predict_proba's width is n_classes_ (uniform, most_frequent, constant): it must be the
            # number of classes, or a boosting model started from it writes past its columns.
            if outputs == 1:
                _dummy_output(est, "", classes(est), None, state(est, "n_classes_"))
            else:
                labels, counts, priors = (state(est, n) for n in ("classes_", "n_classes_", "class_prior_"))
                if not all(isinstance(v, list) and len(v) == outputs for v in (labels, counts, priors)):
                    raise fail(est, f"classes_, n_classes_ and class_prior_ must each list its {outputs} outputs")
                for i in range(outputs):
                    k = len(array(est, f"classes_[{i}]", labels[i], ndim=1, kinds="biufUSO"))
                    _dummy_output(est, f"[{i}]", k, priors[i], counts[i])


def _polynomial(est: Any) -> None:
    """Every input of the expansion transform (and the `powers_` property) reads agrees with what
    fit derives from `degree`: `_max_degree` bounds the loops, `_n_out_full` the array allocated
    per request, `n_output_features_` the columns kept."""
    features = n_features(est)
    degree = state(est, "degree")
    if isinstance(degree, tuple) and len(degree) == 2:
        low = integer(est, "degree[0]", 0, MAX_POLYNOMIAL_DEGREE, degree[0])
        high = integer(est, "degree[1]", low, MAX_POLYNOMIAL_DEGREE, degree[1])
    else:
        low, high = 0, integer(est, "degree", 0, MAX_POLYNOMIAL_DEGREE)
    if state(est, "_min_degree") != low or state(est, "_max_degree") != high:
        raise fail(est, f"_min_degree {state(est, '_min_degree')!r} / _max_degree {state(est, '_max_degree')!r} disagree with degree {degree!r}")
    interaction_only, include_bias = one_of(est, "interaction_only", (False, True)), one_of(est, "include_bias", (False, True))
    one_of(est, "order", ("C", "F"))
    count = functools.partial(_polynomial_outputs, features, max_degree=high, interaction_only=interaction_only, include_bias=include_bias)
    for attr, expected in (("n_output_features_", count(low)), ("_n_out_full", count(0))):
        if expected > MAX_POLYNOMIAL_OUTPUTS:
            raise fail(est, f"{expected} output features (at most {MAX_POLYNOMIAL_OUTPUTS})")
        if integer(est, attr, 0, MAX_POLYNOMIAL_OUTPUTS) != expected:
            raise fail(est, f"{attr} disagrees with degree, n_features_in_, interaction_only and include_bias ({expected})")


def _polynomial_outputs(features: int, min_degree: int, *, max_degree: int, interaction_only: bool, include_bias: bool) -> int:
    """How many columns the expansion has (scikit-learn's own count, in closed form)."""
    return int(PolynomialFeatures._num_combinations(features, min_degree, max_degree, interaction_only, include_bias))


def _dummy_output(est: Any, which: str, k: int, prior: Any, count: Any) -> None:
    """One output of a DummyClassifier: its prior (None: `class_prior_` itself) and its class count
    agree with its k classes."""
    array(est, f"class_prior_{which}", prior, shape=(k,), kinds="f")
    if type(count) not in (int, np.int64) or count != k:
        raise fail(est, f"n_classes_{which} {count!r} is not the {k} classes in classes_{which}")
