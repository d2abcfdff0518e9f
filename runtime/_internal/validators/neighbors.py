"""k-nearest neighbours: fitted samples, labels, n_neighbors and KD/Ball-tree internals in bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.neighbors import BallTree, KDTree

from runtime._internal.validators.common import (
    MAX_NEIGHBORS,
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
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._regression.KNeighborsRegressor",
)
PARTS = (
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    *(f"sklearn.metrics._dist_metrics.{m}Distance64" for m in ("Euclidean", "Manhattan", "Chebyshev", "Minkowski")),
)

METRICS = ("euclidean", "manhattan", "chebyshev", "minkowski", "l1", "l2", "cityblock", "infinity", "p")


def check_binary_tree(tree: Any, samples: np.ndarray | None = None) -> None:
    """KD/Ball tree: a permutation index, node ranges inside it, a complete binary node layout."""
    state = tree.__getstate__()
    if not isinstance(state, tuple) or len(state) != 13:
        raise fail(tree, "its state does not have scikit-learn's layout")
    data, idx, node_data, bounds = (array(tree, n, v, kinds=k) for n, v, k in zip(
        ("data", "idx_array", "node_data", "node_bounds"), state[:4], ("f", "i", "V", "f"), strict=True))
    if data.ndim != 2 or (samples is not None and data.shape != samples.shape):
        raise fail(tree, f"its data {data.shape} is not the estimator's fitted samples")
    n, width = data.shape
    if idx.shape != (n,) or not np.array_equal(np.sort(idx), np.arange(n)):
        raise fail(tree, "idx_array is not a permutation of the samples")
    n_nodes = len(node_data)
    n_levels = integer(tree, "n_levels", 1, 64, state[5])
    if node_data.ndim != 1 or n_nodes != 2**n_levels - 1 or n_nodes != state[6] or set(node_data.dtype.names or ()) != {"idx_start", "idx_end", "is_leaf", "radius"}:
        raise fail(tree, f"{n_nodes} nodes for {n_levels} levels")
    start, end = node_data["idx_start"], node_data["idx_end"]
    if (start < 0).any() or (end > n).any() or (start > end).any():
        raise fail(tree, "a node's sample range is outside the index")
    inner = np.flatnonzero(node_data["is_leaf"] == 0)
    if inner.size and int(inner.max()) * 2 + 2 >= n_nodes:
        raise fail(tree, "an inner node has children beyond the node array")
    rows = 2 if isinstance(tree, KDTree) else 1
    if bounds.shape != (rows, n_nodes, width):
        raise fail(tree, f"node_bounds has shape {bounds.shape}, expected {(rows, n_nodes, width)}")
    integer(tree, "leaf_size", 1, 1 << 30, state[4])
    if state[12] is not None:
        array(tree, "sample_weight", state[12], shape=(n,), kinds="f")
    metric = state[11]
    if not type(metric).__name__.endswith("Distance64"):
        raise fail(tree, f"distance metric {type(metric).__name__} is not accepted")
    check_metric(metric, width)


def check_metric(metric: Any, width: int) -> None:
    """p >= 1, and weights (if any) cover exactly the features the distance loops over."""
    p, vec, mat = metric.__getstate__()[:3]
    if not (isinstance(p, float) and np.isfinite(p) and p >= 1):
        raise fail(metric, f"p = {p!r} must be a finite number >= 1")
    vec = array(metric, "vec", np.asarray(vec), ndim=1, kinds="f")
    # Only Minkowski reads its weights, one per feature, whenever it has any.
    if type(metric).__name__.startswith("Minkowski") and len(vec) not in (0, width):
        raise fail(metric, f"{len(vec)} weights for {width} features")
    array(metric, "mat", np.asarray(mat), ndim=2, kinds="f")


def validate(est: Any) -> None:
    features = n_features(est)
    samples = array(est, "_fit_X", shape=(None, features), kinds="f")
    n = integer(est, "n_samples_fit_", 1, len(samples))
    if n != len(samples):
        raise fail(est, "n_samples_fit_ disagrees with _fit_X")
    integer(est, "n_neighbors", 1, min(n, MAX_NEIGHBORS))
    one_of(est, "weights", ("uniform", "distance"))
    one_of(est, "effective_metric_", METRICS)
    params = state(est, "effective_metric_params_", {})
    if not isinstance(params, dict) or set(params) - {"p"}:
        raise fail(est, f"effective_metric_params_ {params!r} is not accepted")
    if "p" in params and not (isinstance(params["p"], (int, float)) and params["p"] >= 1):
        raise fail(est, "metric parameter p must be >= 1")
    method = one_of(est, "_fit_method", ("brute", "kd_tree", "ball_tree"))
    tree = state(est, "_tree")
    if method == "brute":
        if tree is not None:
            raise fail(est, "a brute-force model carries a tree")
    else:
        if not isinstance(tree, KDTree if method == "kd_tree" else BallTree):
            raise fail(est, f"_tree is a {type(tree).__name__}, not the {method} its _fit_method names")
        check_binary_tree(tree, samples)
    labels = array(est, "_y", kinds="iuf")
    if labels.shape[0] != n or labels.ndim not in (1, 2):
        raise fail(est, f"_y has shape {labels.shape}, expected {n} rows")
    if is_classifier(est):
        if labels.dtype.kind not in "iu":
            raise fail(est, "_y must hold class indices")
        counts = [len(c) for c in state(est, "classes_")] if labels.ndim == 2 else [classes(est)]
        columns = labels.reshape(n, -1)
        if columns.shape[1] != len(counts):
            raise fail(est, "_y and classes_ disagree on the number of outputs")
        for k, count in enumerate(counts):
            in_range(est, "_y", columns[:, k], 0, count)
