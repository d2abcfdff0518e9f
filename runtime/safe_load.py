"""Load skops bytes from the loader as untrusted data: caps, zip checks, allowlist, tree checks.

A signed-but-hostile pickle controlled the child that produced these bytes, so nothing here
assumes they are well formed. skops never runs code on load, but it does rebuild
scikit-learn's Cython trees, whose `predict` trusts its node indices blindly.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import skops.io
from sklearn.base import BaseEstimator
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.tree._tree import Tree

from runtime.errors import ModelRefused

MAX_ZIP_ENTRIES = 10_000
MAX_UNCOMPRESSED_BYTES = 4 << 30
MAX_COMPRESSION_RATIO = 200
MAX_WALK_DEPTH = 64

TREE_TYPES = [
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


def check_archive(data: bytes) -> None:
    """Refuse archives that are not a plausible skops file, before skops reads them."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ModelRefused(f"the converted model is not a skops archive: {exc}", 422) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise ModelRefused(f"the converted model has {len(infos)} archive entries (limit {MAX_ZIP_ENTRIES})", 422)
        if "schema.json" not in archive.namelist():
            raise ModelRefused("the converted model has no schema.json: not a skops archive", 422)
        total = 0
        for info in infos:
            total += info.file_size
            if info.file_size > 1 << 20 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
                raise ModelRefused(
                    f"archive entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x: "
                    "refused as a zip bomb",
                    422,
                )
        if total > MAX_UNCOMPRESSED_BYTES:
            raise ModelRefused(f"the converted model expands to {total} bytes (limit {MAX_UNCOMPRESSED_BYTES})", 422)


def _walk(obj: Any, seen: set[int], depth: int = 0) -> Iterator[Any]:
    if id(obj) in seen or depth > MAX_WALK_DEPTH:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, dict):
        children: Any = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, np.ndarray):
        children = list(obj.ravel()) if obj.dtype == object else []
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        children = []
    for child in children:
        yield from _walk(child, seen, depth + 1)


def _check_nodes(where: str, left: np.ndarray, right: np.ndarray, feature: np.ndarray, leaf: np.ndarray, n_features: int) -> None:
    n = len(left)
    idx = np.arange(n)
    inner = ~leaf
    # Children come after their parent (how scikit-learn builds trees): in range, and no cycles.
    for name, child in (("left", left), ("right", right)):
        bad = inner & ((child <= idx) | (child >= n))
        if bad.any():
            raise ModelRefused(f"{where}: node {int(idx[bad][0])} has an out-of-range {name} child", 422)
    bad = inner & ((feature < 0) | (feature >= n_features))
    if bad.any():
        raise ModelRefused(f"{where}: node {int(idx[bad][0])} splits on a feature outside [0, {n_features})", 422)


def validate_trees(model: Any) -> int:
    """Check node and feature indices of every tree in the model; return how many were checked."""
    checked = 0
    n_features = int(getattr(model, "n_features_in_", 0) or 0)
    for obj in _walk(model, set()):
        if isinstance(obj, Tree):
            n = obj.node_count
            left, right = np.asarray(obj.children_left), np.asarray(obj.children_right)
            if len(left) != n or len(right) != n or np.asarray(obj.value).shape[0] != n:
                raise ModelRefused(f"decision tree {checked}: node arrays disagree with node_count {n}", 422)
            leaf = left == -1
            if ((right == -1) != leaf).any():
                raise ModelRefused(f"decision tree {checked}: a node has exactly one child", 422)
            _check_nodes(f"decision tree {checked}", left, right, np.asarray(obj.feature), leaf, obj.n_features)
            if n_features and obj.n_features != n_features:
                raise ModelRefused(f"decision tree {checked}: built for {obj.n_features} features, model has {n_features}", 422)
            checked += 1
        elif isinstance(obj, TreePredictor):
            nodes = obj.nodes
            leaf = nodes["is_leaf"].astype(bool)
            bound = n_features or int(nodes["feature_idx"].max(initial=0)) + 1
            _check_nodes(
                f"boosted tree {checked}", nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                nodes["feature_idx"].astype(np.int64), leaf, bound,
            )
            checked += 1
    return checked


def load_model(data: bytes, extra_trusted: list[str]) -> BaseEstimator:
    """Validate and load skops bytes; only skops' defaults, trees and `extra_trusted` are allowed."""
    check_archive(data)
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - malformed archives raise many kinds of errors
        raise ModelRefused(f"the converted model's schema is unreadable: {exc}", 422) from None
    allowed = set(extra_trusted) | set(TREE_TYPES)
    refused = sorted(set(untrusted) - allowed)
    if refused:
        raise ModelRefused(
            f"the model holds types outside the allowlist: {refused}; add them to "
            "parameters.extra.sigstore.trusted_types only if you trust their code",
            422,
        )
    try:
        model = skops.io.loads(data, trusted=sorted(set(untrusted) & allowed))
    except Exception as exc:  # noqa: BLE001
        raise ModelRefused(f"the converted model could not be loaded by skops: {type(exc).__name__}: {exc}", 422) from None
    if not isinstance(model, BaseEstimator):
        raise ModelRefused(f"the converted model is a {type(model).__name__}, not a scikit-learn estimator", 422)
    validate_trees(model)
    return model
