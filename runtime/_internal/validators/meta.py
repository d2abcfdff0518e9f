"""TransformedTargetRegressor and the search objects (GridSearchCV, RandomizedSearchCV).

A search predicts with `best_estimator_`, validated like any model by its own family (the walk
reaches it). Its `cv_results_` is accepted as inert data: arrays, masked arrays (data and mask
only) and lists of parameter dicts whose elements the walk checks like any other value; nothing
in it is called at predict. (Dropping it in the loader's child would lose what users inspect, and
would make the runtime depend on the child's good behaviour, which a hostile pickle controls.)"""

from __future__ import annotations

from typing import Any

from sklearn.base import BaseEstimator

from runtime._internal.validators.common import fail, has, is_classifier, one_of, state
from runtime._internal.validators.composite import check_nesting
from runtime._internal.validators.preprocessing import elementwise

TYPES = (
    "sklearn.compose._target.TransformedTargetRegressor",
    "sklearn.model_selection._search.GridSearchCV",
    "sklearn.model_selection._search.RandomizedSearchCV",
)
# Held by a search, never called at predict: the default scorer and the splitters.
PARTS = (
    "sklearn.metrics._scorer._PassthroughScorer",
    *(f"sklearn.model_selection._split.{n}" for n in (
        "KFold", "StratifiedKFold", "GroupKFold", "StratifiedGroupKFold", "ShuffleSplit",
        "StratifiedShuffleSplit", "RepeatedKFold", "RepeatedStratifiedKFold", "TimeSeriesSplit",
    )),
)
CHECK_UNFITTED = True


def _target(est: Any) -> None:
    elementwise(est, "func", state(est, "func"), None)
    elementwise(est, "inverse_func", state(est, "inverse_func"), None)
    if not has(est, "regressor_"):
        return
    regressor, transformer = state(est, "regressor_"), state(est, "transformer_")
    if not isinstance(regressor, BaseEstimator) or is_classifier(regressor):
        raise fail(est, f"regressor_ is a {type(regressor).__name__}, not a regressor")
    if not isinstance(transformer, BaseEstimator):
        raise fail(est, f"transformer_ is a {type(transformer).__name__}, not a transformer")
    one_of(est, "_training_dim", (1, 2))


def _search(est: Any) -> None:
    if not has(est, "best_estimator_"):
        if state(est, "refit") is not False and has(est, "cv_results_"):
            raise fail(est, "a refitted search has no best_estimator_")
        return
    best = state(est, "best_estimator_")
    if not isinstance(best, BaseEstimator):
        raise fail(est, f"best_estimator_ is a {type(best).__name__}, not an estimator")
    scorer = state(est, "scorer_")
    if scorer is not None and type(scorer).__name__ != "_PassthroughScorer":
        raise fail(est, f"scorer_ is a {type(scorer).__name__}; only the estimator's own score is accepted")
    results = state(est, "cv_results_")
    if results is not None and not (isinstance(results, dict) and all(isinstance(k, str) for k in results)):
        raise fail(est, "cv_results_ is not a dict of named columns")


def validate(est: Any) -> None:
    check_nesting(est)
    if type(est).__name__ == "TransformedTargetRegressor":
        _target(est)
    else:
        _search(est)
