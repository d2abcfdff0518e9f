"""Structural validation of every object in a loaded model, one module per estimator family.

The walk visits each object once (shared objects included), has no depth cut, and refuses a model
with more than MAX_OBJECTS objects instead. Every estimator of an allowlisted family is checked by
its family's validator; parts (trees, predictors, KD/Ball trees, partials, sparse matrices) are
checked wherever they appear; anything else must be a plain value or a type the operator trusted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.neighbors import BallTree, KDTree
from sklearn.tree._tree import Tree
from sklearn.utils import get_tags
from sklearn.utils.validation import _is_fitted

from runtime._internal.allowlist import ALLOWLIST, FAMILY_OF, qualified_name
from runtime._internal.prescan import refuse
from runtime._internal.validators import (
    common,
    composite,
    hist_gb,
    linear,
    mlp,
    naive_bayes,
    neighbors,
    preprocessing,
    svm,
    text,
    trees,
)
from runtime.errors import ModelRefused

MAX_OBJECTS = 20_000_000
FAMILIES: dict[str, Callable[[Any], None]] = {
    "linear": linear.validate,
    "svm": svm.validate,
    "trees": trees.validate,
    "hist_gb": hist_gb.validate,
    "neighbors": neighbors.validate,
    "naive_bayes": naive_bayes.validate,
    "mlp": mlp.validate,
    "preprocessing": preprocessing.validate,
    "text": text.validate,
    "composite": composite.validate,
}
_PLAIN = (type(None), bool, int, float, str, bytes, slice, np.dtype, np.bool_, np.number, np.str_, np.bytes_)
_VALUE_TYPES = (int, float, str, bool)


def _check_part(obj: Any) -> bool:
    """Validate a known non-estimator part; False when `obj` is not one."""
    if isinstance(obj, Tree):
        trees.check_tree(obj)
    elif isinstance(obj, TreePredictor):
        hist_gb.check_predictor(obj, (1 << 31) - 1, None)
    elif isinstance(obj, (KDTree, BallTree)):
        neighbors.check_binary_tree(obj)
    elif isinstance(obj, functools.partial):
        preprocessing.check_partial(obj, obj)
    elif isinstance(obj, np.random.Generator):
        pass  # its state is numpy's to check; its bit generator is visited (`_inside_part`)
    elif sparse.issparse(obj):
        common.check_sparse(obj, "a sparse matrix", obj)
    else:
        return False
    return True


def _inside_part(obj: Any) -> list[Any]:
    """What a checked part holds that the walk must still visit: a partial's arguments and
    attributes; a Generator's bit generator (its type is allowlisted like any other)."""
    if isinstance(obj, functools.partial):
        return [*obj.args, *obj.keywords.values(), *vars(obj).values()]
    if isinstance(obj, np.random.Generator):
        return [obj.bit_generator]
    return []


def _run(check: Callable[[Any], Any], obj: Any) -> Any:
    """A validator that trips over a malformed object (missing attribute, odd type) refuses it."""
    try:
        return check(obj)
    except ModelRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - any surprise in hostile data is a refusal
        raise common.fail(obj, f"malformed ({type(exc).__name__}: {exc})") from None


def _in_use(est: Any, family: str) -> bool:
    """False only for an unfitted estimator that scikit-learn refuses to predict with (parameter
    templates such as a forest's `estimator`; owners validate the members they call directly).
    Stateless estimators (HashingVectorizer) run unfitted, so they are always checked."""
    if family == "composite" or _is_fitted(est):
        return True
    try:
        return not get_tags(est).requires_fit
    except Exception:  # noqa: BLE001 - a malformed estimator is checked, not skipped
        return True


def _n_jobs(est: Any) -> None:
    jobs = common.state(est, "n_jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or not -common.MAX_N_JOBS <= jobs <= common.MAX_N_JOBS):
        raise common.fail(est, f"n_jobs = {jobs!r} is outside [-{common.MAX_N_JOBS}, {common.MAX_N_JOBS}]")


def validate_model(model: Any, trusted: frozenset[str] = frozenset()) -> int:
    """Validate every object reachable from `model`; return how many objects were visited."""
    if not isinstance(model, BaseEstimator):
        raise refuse(f"it is a {type(model).__name__}, not a scikit-learn estimator")
    seen: set[int] = set()
    stack: list[Any] = [model]
    keep: list[Any] = []  # keeps visited objects alive so their ids stay unique during the walk
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        if len(seen) > MAX_OBJECTS:
            raise refuse(f"it holds more than {MAX_OBJECTS} objects")
        if isinstance(obj, np.dtype) or (isinstance(obj, _PLAIN) and type(obj).__module__ in ("builtins", "numpy")):
            continue
        if type(obj) is np.ndarray:
            if obj.dtype.hasobject:
                stack.extend(obj.ravel().tolist())
            continue
        if type(obj) in (dict, list, tuple, set, frozenset):
            if type(obj) is dict:
                for key in obj:
                    if not isinstance(key, (str, int, np.integer)):
                        raise refuse(f"a dict key is a {type(key).__name__}")
                stack.extend(obj.values())
            else:
                stack.extend(obj)
            continue
        if isinstance(obj, type):
            if obj in _VALUE_TYPES or issubclass(obj, np.generic):
                continue
            raise refuse(f"it holds the class {qualified_name(obj)} as a value; only numeric types are accepted")
        name = qualified_name(type(obj))
        if name not in ALLOWLIST and name not in trusted:
            raise refuse(
                f"it holds a {name}, which is not in the allowlist; add it to "
                "parameters.extra.sigstore.trusted_types only if you trust its code and data"
            )
        if _run(_check_part, obj):
            stack.extend(_inside_part(obj))
            continue
        if isinstance(obj, BaseEstimator):
            _n_jobs(obj)
            family = FAMILY_OF.get(name)
            if family is not None and _in_use(obj, family):
                _run(FAMILIES[family], obj)
        stack.extend(getattr(obj, "__dict__", {}).values())
    return len(seen)
