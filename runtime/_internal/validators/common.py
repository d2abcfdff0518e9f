"""Helpers every family validator uses: typed array checks, bounded counts, one refusal."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import ClassifierMixin

from runtime._internal.refusal import refuse
from runtime.errors import ModelRefused

MAX_FEATURES = 10_000_000
MAX_CLASSES = 100_000
MAX_ESTIMATORS = 100_000
MAX_NEIGHBORS = 10_000
MAX_NESTING = 6
MAX_N_JOBS = 64


def qualified_name(cls: type) -> str:
    """`module.Class` as skops names a type."""
    return f"{cls.__module__}.{cls.__qualname__}"


def where(obj: Any) -> str:
    return type(obj).__name__


def state(obj: Any, name: str, default: Any = None) -> Any:
    """`obj`'s stored attribute `name` (from its instance dict), or `default` when it has none.

    Validators read fitted state only through this (and a Cython part's `__getstate__`): never a
    class attribute, method or property. A computed property runs scikit-learn code on state no
    check has looked at yet (`PolynomialFeatures.powers_` enumerates every combination up to a
    stored `_max_degree`: 10**6 grew memory without bound inside load_model)."""
    attributes = getattr(obj, "__dict__", None)  # the instance dict itself, never a class attribute
    if type(attributes) is not dict:
        raise fail(obj, "it has no attribute dict")
    return attributes.get(name, default)


def has(obj: Any, name: str) -> bool:
    """Whether `obj` stores the attribute `name` (see `state`)."""
    attributes = getattr(obj, "__dict__", None)
    return type(attributes) is dict and name in attributes


def fail(obj: Any, message: str) -> ModelRefused:
    return refuse(f"{where(obj)}: {message}")


def array(
    obj: Any,
    name: str,
    value: Any = None,
    *,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
    kinds: str = "biuf",
) -> np.ndarray:
    """`obj.name` (or `value`) as a numeric ndarray of the given rank/shape; refuse otherwise."""
    found = state(obj, name) if value is None else value
    if not isinstance(found, np.ndarray) or type(found) is not np.ndarray:
        raise fail(obj, f"{name} is a {type(found).__name__}, not a numpy array")
    if found.dtype.kind not in kinds:
        raise fail(obj, f"{name} has dtype {found.dtype}, expected one of kinds {kinds!r}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and found.ndim != ndim:
        raise fail(obj, f"{name} has {found.ndim} dimensions, expected {ndim}")
    if shape is not None:
        for axis, (got, want) in enumerate(zip(found.shape, shape, strict=True)):
            if want is not None and got != want:
                raise fail(obj, f"{name} has shape {found.shape}; axis {axis} should be {want}")
    return found


def integer(obj: Any, name: str, low: int, high: int, value: Any = None) -> int:
    """`obj.name` as a plain integer in [low, high]; refuse otherwise."""
    found = state(obj, name) if value is None else value
    if isinstance(found, bool) or not isinstance(found, (int, np.integer)):
        raise fail(obj, f"{name} is a {type(found).__name__}, not an integer")
    if not low <= int(found) <= high:
        raise fail(obj, f"{name} = {int(found)} is outside [{low}, {high}]")
    return int(found)


def n_features(obj: Any) -> int:
    """The required `n_features_in_` of an estimator that owns trees, support vectors or samples."""
    if not has(obj, "n_features_in_"):
        raise fail(obj, "n_features_in_ is missing; it is required for this estimator")
    return integer(obj, "n_features_in_", 1, MAX_FEATURES)


def optional_n_features(obj: Any) -> int | None:
    return n_features(obj) if has(obj, "n_features_in_") else None


def one_of(obj: Any, name: str, allowed: tuple[Any, ...]) -> Any:
    found: Any = state(obj, name)
    if not any(found is a or (type(found) is type(a) and found == a) for a in allowed):
        raise fail(obj, f"{name} = {found!r} is not one of {list(allowed)}")
    return found


def classes(obj: Any, name: str = "classes_") -> int:
    """Length of a 1-D class label array, bounded."""
    found = array(obj, name, ndim=1, kinds="biufUSO")
    if not 1 <= len(found) <= MAX_CLASSES:
        raise fail(obj, f"{name} has {len(found)} classes (limit {MAX_CLASSES})")
    return len(found)


def in_range(obj: Any, name: str, values: np.ndarray, low: int, high: int) -> None:
    """Every value in [low, high)."""
    if values.size and (int(values.min()) < low or int(values.max()) >= high):
        raise fail(obj, f"{name} holds an index outside [{low}, {high})")


def check_sparse(owner: Any, name: str, matrix: Any) -> None:
    """A sparse matrix in CSR/CSC/COO form whose indices pass scipy's full format check."""
    if not sparse.issparse(matrix) or matrix.format not in ("csr", "csc", "coo"):
        raise fail(owner, f"{name} is a sparse matrix of format {getattr(matrix, 'format', '?')}; csr/csc/coo only")
    try:
        if matrix.format == "coo":
            rows, cols = matrix.shape
            if matrix.row.size != matrix.col.size or matrix.row.size != matrix.data.size:
                raise ValueError("row, col and data lengths differ")
            in_range(owner, f"{name} rows", matrix.row, 0, rows)
            in_range(owner, f"{name} columns", matrix.col, 0, cols)
        else:
            matrix.check_format(full_check=True)
    except ModelRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError/IndexError/TypeError
        raise fail(owner, f"{name} is a malformed sparse matrix: {exc}") from None


def matrix(obj: Any, name: str, shape: tuple[int | None, ...]) -> Any:
    """A dense or (fully checked) sparse 2-D coefficient matrix of the given shape."""
    found: Any = state(obj, name)
    if sparse.issparse(found):
        check_sparse(obj, name, found)
        for axis, (got, want) in enumerate(zip(found.shape, shape, strict=True)):
            if want is not None and got != want:
                raise fail(obj, f"{name} has shape {found.shape}; axis {axis} should be {want}")
        return found
    return array(obj, name, shape=shape)


def is_classifier(est: Any) -> bool:
    """By class, not by scikit-learn's tags (`__sklearn_tags__` of a meta-estimator reads its
    sub-estimators before they are checked)."""
    return isinstance(est, ClassifierMixin)
