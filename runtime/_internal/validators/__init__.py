"""Structural validation of every object in a loaded model, one module per estimator family.

The walk visits each object once (shared objects included), has no depth cut, and refuses a model
with more than MAX_OBJECTS objects instead. Every estimator of an allowlisted family is checked by
its family's validator; parts (trees, predictors, KD/Ball trees, partials, sparse matrices) are
checked wherever they appear; anything else must be a plain value or a type the operator trusted.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.neighbors import BallTree, KDTree
from sklearn.tree._tree import Tree
from sklearn.utils import Bunch, get_tags
from sklearn.utils.validation import _is_fitted

from runtime._internal.refusal import refuse
from runtime._internal.validators import (
    calibration,
    cluster,
    common,
    composite,
    ensembles,
    hist_gb,
    linear,
    meta,
    mlp,
    naive_bayes,
    neighbors,
    preprocessing,
    svm,
    text,
    trees,
)
from runtime._internal.validators.common import qualified_name
from runtime.errors import ModelRefused

MAX_OBJECTS = 20_000_000
# Each family module declares TYPES (the estimators its `validate` checks), optionally PARTS
# (types that only appear inside them), CHECK_UNFITTED (validate even unfitted: composites and
# meta-estimators, whose validators tell templates from fitted models themselves) and DERIVED
# (attributes a class rebuilds from state its validator checked; the walk does not enter them).
FAMILIES: dict[str, Any] = {
    module.__name__.rpartition(".")[2]: module
    for module in (
        linear, svm, trees, hist_gb, neighbors, naive_bayes, mlp, preprocessing, text, composite,
        ensembles, calibration, meta, cluster,
    )
}
FAMILY_OF: dict[str, str] = {name: family for family, module in FAMILIES.items() for name in module.TYPES}
# The plain value types the families need, and parts several families share (losses and links).
VALUES = (
    *(f"builtins.{n}" for n in ("dict", "list", "tuple", "set", "str", "int", "float", "bool", "NoneType", "slice")),
    "numpy.ndarray",
    "numpy.dtype",
    *(f"numpy.{n}" for n in (
        "float16", "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool_", "bool", "str_", "bytes_",
    )),
    # Masked arrays (a search's cv_results_): data and mask only, elements walked like any array's.
    "numpy.ma.MaskedArray",
    "numpy.ma.core.MaskedArray",
    "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    "numpy.random._pcg64.PCG64",
    "numpy.random.bit_generator.SeedSequence",
    "scipy.sparse._csr.csr_matrix",
    "scipy.sparse._csc.csc_matrix",
    "scipy.sparse._coo.coo_matrix",
    "scipy.sparse._csr.csr_array",
    "scipy.sparse._csc.csc_array",
    "scipy.sparse._coo.coo_array",
    "sklearn.utils._bunch.Bunch",  # named_estimators_: a dict, walked as one
    *(f"sklearn._loss.loss.{n}" for n in (
        "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss", "HalfPoissonLoss", "HalfGammaLoss",
        "HalfTweedieLoss", "HalfTweedieLossIdentity", "HalfBinomialLoss", "HalfMultinomialLoss", "ExponentialLoss",
    )),
    *(f"sklearn._loss._loss.Cy{n}" for n in (
        "HalfSquaredError", "AbsoluteError", "PinballLoss", "HuberLoss", "HalfPoissonLoss", "HalfGammaLoss",
        "HalfTweedieLoss", "HalfTweedieLossIdentity", "HalfBinomialLoss", "HalfMultinomialLoss", "ExponentialLoss",
    )),
    *(f"sklearn._loss.link.{n}" for n in (
        "IdentityLink", "LogLink", "LogitLink", "HalfLogitLink", "MultinomialLogit", "Interval",
    )),
)
PARTS: frozenset[str] = frozenset(name for module in FAMILIES.values() for name in getattr(module, "PARTS", ()))
ALLOWLIST: frozenset[str] = frozenset(FAMILY_OF) | PARTS | frozenset(VALUES)
FUNCTIONS: frozenset[str] = frozenset(preprocessing.FUNCTIONS)
# The accepted function objects themselves, resolved once: a value is accepted by identity.
_FUNCTION_OBJECTS = tuple(getattr(importlib.import_module(name.rpartition(".")[0]), name.rpartition(".")[2]) for name in FUNCTIONS)
_DERIVED: dict[str, tuple[str, ...]] = {
    name: attrs for module in FAMILIES.values() for name, attrs in getattr(module, "DERIVED", {}).items()
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
    if getattr(FAMILIES[family], "CHECK_UNFITTED", False) or _is_fitted(est):
        return True
    try:
        return not get_tags(est).requires_fit
    except Exception:  # noqa: BLE001 - a malformed estimator is checked, not skipped
        return True


def _masked(obj: Any) -> list[Any]:
    """A masked array is inert data: its data (elements walked like any array's) and a boolean
    mask of its shape; nothing else set on it."""
    mask = obj._mask
    if mask is not np.ma.nomask and not (type(mask) is np.ndarray and mask.dtype == np.bool_ and mask.shape == obj.shape):
        raise refuse("a masked array's mask is not a boolean array of its shape")
    if obj._baseclass is not np.ndarray:
        raise refuse("a masked array is based on another class than numpy.ndarray")
    return [obj.view(np.ndarray)]


def _n_jobs(est: Any) -> None:
    jobs = common.state(est, "n_jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or not -common.MAX_N_JOBS <= jobs <= common.MAX_N_JOBS):
        raise common.fail(est, f"n_jobs = {jobs!r} is outside [-{common.MAX_N_JOBS}, {common.MAX_N_JOBS}]")


def validate_model(model: Any, trusted: frozenset[str] = frozenset()) -> int:
    """Validate every object reachable from `model`; return how many objects were visited.

    Every type outside the allowlist and `trusted` is named in one refusal. Objects that a
    trusted type's own code built while loading (LightGBM's Booster makes a ctypes handle in
    `__setstate__`: the archive never names it, and the pre-scan refused every type it does
    name) belong to that trusted type: they are not walked and need no trust of their own."""
    if not isinstance(model, BaseEstimator):
        raise refuse(f"it is a {type(model).__name__}, not a scikit-learn estimator")
    seen: set[int] = set()
    stack: list[Any] = [model]
    keep: list[Any] = []  # keeps visited objects alive so their ids stay unique during the walk
    built_by_trusted: set[int] = set()  # ids of what a trusted type's objects hold (see above)
    outside: set[str] = set()
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
        if type(obj) is np.ma.MaskedArray:
            stack.extend(_run(_masked, obj))
            continue
        if any(obj is f for f in _FUNCTION_OBJECTS):
            continue  # an accepted function; its caller's validator checked how it is called
        if type(obj) in (dict, list, tuple, set, frozenset, Bunch):
            if type(obj) in (dict, Bunch):
                for key in obj:
                    if not isinstance(key, (str, int, np.integer)):
                        raise refuse(f"a dict key is a {type(key).__name__}")
                items = list(obj.values())
            else:
                items = list(obj)
            if id(obj) in built_by_trusted:
                built_by_trusted.update(id(item) for item in items)
            stack.extend(items)
            continue
        if isinstance(obj, type):
            if obj in _VALUE_TYPES or issubclass(obj, np.generic):
                continue
            raise refuse(f"it holds the class {qualified_name(obj)} as a value; only numeric types are accepted")
        name = qualified_name(type(obj))
        if name not in ALLOWLIST and name not in trusted:
            if id(obj) not in built_by_trusted:
                outside.add(name)
            continue
        if _run(_check_part, obj):
            stack.extend(_inside_part(obj))
            continue
        if isinstance(obj, BaseEstimator):
            _n_jobs(obj)
            family = FAMILY_OF.get(name)
            if family is not None and _in_use(obj, family):
                _run(FAMILIES[family].validate, obj)
        skip = _DERIVED.get(name, ())
        held = [value for key, value in getattr(obj, "__dict__", {}).items() if key not in skip]
        if name not in ALLOWLIST or id(obj) in built_by_trusted:
            built_by_trusted.update(id(value) for value in held)
        stack.extend(held)
    if outside:
        raise ModelRefused(
            f"the converted model is refused: it holds {sorted(outside)}, which are not in the allowlist; add them to "
            "parameters.extra.sigstore.trusted_types only if you trust their code and data", 422
        )
    return len(seen)
