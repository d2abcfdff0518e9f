"""Decision trees, forests and gradient boosting: every node index of every tree in bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.tree._tree import NODE_DTYPE, Tree

from runtime._internal.validators.common import (
    MAX_ESTIMATORS,
    array,
    classes,
    fail,
    in_range,
    integer,
    is_classifier,
    n_features,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
)
# Parts that only exist inside the estimators above; checked wherever they appear.
PARTS = ("sklearn.tree._tree.Tree",)

TREE_ESTIMATORS = ("DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor")


def check_tree(tree: Tree) -> None:
    """Node arrays of exactly node_count == capacity entries; children after their parent; features in range."""
    state = tree.__getstate__()
    nodes, values = state.get("nodes"), state.get("values")
    if not isinstance(nodes, np.ndarray) or nodes.dtype != NODE_DTYPE or nodes.ndim != 1:
        raise fail(tree, "its node array does not have scikit-learn's node layout")
    n = int(state.get("node_count", -1))
    if not (1 <= n == len(nodes) == int(tree.capacity)):
        raise fail(tree, f"node_count {n}, capacity {tree.capacity} and {len(nodes)} stored nodes disagree")
    n_outputs, n_features = int(tree.n_outputs), int(tree.n_features)
    n_classes = np.asarray(tree.n_classes)
    if n_outputs < 1 or n_features < 1 or n_classes.shape != (n_outputs,) or int(n_classes.min()) < 1:
        raise fail(tree, f"n_outputs {n_outputs}, n_features {n_features} or n_classes {n_classes} are inconsistent")
    array(tree, "values", values, shape=(n, n_outputs, int(n_classes.max())), kinds="f")
    left, right, feature = nodes["left_child"], nodes["right_child"], nodes["feature"]
    leaf = left == -1
    if ((right == -1) != leaf).any():
        raise fail(tree, "a node has exactly one child")
    idx = np.arange(n)
    inner = ~leaf
    for name, child in (("left", left), ("right", right)):
        bad = inner & ((child <= idx) | (child >= n))
        if bad.any():
            raise fail(tree, f"node {int(idx[bad][0])} has an out-of-range {name} child")
    bad = inner & ((feature < 0) | (feature >= n_features))
    if bad.any():
        raise fail(tree, f"node {int(idx[bad][0])} splits on a feature outside [0, {n_features})")


def check_tree_estimator(est: Any, n_feat: int | None = None) -> None:
    """One DecisionTree*/ExtraTree*: its tree agrees with n_features_in_, outputs and classes."""
    if type(est).__name__ not in TREE_ESTIMATORS:
        raise fail(est, "a tree ensemble member is not a decision tree")
    features = n_features(est)
    if n_feat is not None and features != n_feat:
        raise fail(est, f"built for {features} features, its ensemble for {n_feat}")
    tree = state(est, "tree_")
    if not isinstance(tree, Tree):
        raise fail(est, "tree_ is not a scikit-learn Tree")
    check_tree(tree)
    if int(tree.n_features) != features:
        raise fail(est, f"its tree splits {tree.n_features} features, n_features_in_ is {features}")
    n_outputs = integer(est, "n_outputs_", 1, 10_000)
    if int(tree.n_outputs) != n_outputs:
        raise fail(est, "tree and estimator disagree on the number of outputs")
    if is_classifier(est):
        labels = state(est, "classes_") if n_outputs > 1 else [state(est, "classes_")]
        if not isinstance(labels, list) or len(labels) != n_outputs:
            raise fail(est, "classes_ does not have one entry per output")
        counts = [classes(est, "classes_") if n_outputs == 1 else len(c) for c in labels]
        if list(np.asarray(tree.n_classes)) != counts:
            raise fail(est, "the tree's class counts disagree with classes_")
    elif list(np.asarray(tree.n_classes)) != [1] * n_outputs:
        raise fail(est, "a regression tree must have one value per output")


def check_forest(est: Any) -> None:
    features = n_features(est)
    members = state(est, "estimators_")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_ESTIMATORS:
        raise fail(est, f"estimators_ must be a list of 1 to {MAX_ESTIMATORS} trees")
    n_outputs = integer(est, "n_outputs_", 1, 10_000)
    for member in members:
        check_tree_estimator(member, features)
        if state(member, "n_outputs_") != n_outputs or is_classifier(member) != is_classifier(est):
            raise fail(est, "a member tree disagrees with the forest's outputs or task")
        if is_classifier(est) and n_outputs == 1 and classes(member) != classes(est):
            raise fail(est, "a member tree has a different number of classes")


def check_gradient_boosting(est: Any) -> None:
    features = n_features(est)
    stages = array(est, "estimators_", ndim=2, kinds="O")
    per_iteration = integer(est, "n_trees_per_iteration_", 1, MAX_ESTIMATORS)
    if is_classifier(est):
        n_classes = classes(est)
        if n_classes < 2 or per_iteration != (1 if n_classes == 2 else n_classes):
            raise fail(est, f"{per_iteration} trees per iteration for {n_classes} classes")
    elif per_iteration != 1:
        raise fail(est, "a regressor has one tree per iteration")
    if stages.shape[1] != per_iteration or not 1 <= stages.shape[0] * stages.shape[1] <= MAX_ESTIMATORS:
        raise fail(est, f"estimators_ has shape {stages.shape}; expected (n, {per_iteration})")
    integer(est, "n_estimators_", stages.shape[0], stages.shape[0])
    for member in stages.ravel():
        if type(member).__name__ != "DecisionTreeRegressor":
            raise fail(est, "a boosting stage is not a DecisionTreeRegressor")
        check_tree_estimator(member, features)
        if state(member, "n_outputs_") != 1:
            raise fail(est, "a boosting stage predicts more than one output")
    init = state(est, "init_")
    if not (init == "zero" or type(init).__name__ in ("DummyClassifier", "DummyRegressor")):
        raise fail(est, f"init_ is a {type(init).__name__}; only 'zero' or a Dummy estimator is accepted")
    if is_classifier(est) and init != "zero" and classes(init) != n_classes:
        raise fail(est, "init_ disagrees with the number of classes")
    # predict_stages writes one raw-prediction column per tree of an iteration, into columns
    # sized by the loss and init_: they must be at least as many.
    if per_iteration > 1 and init != "zero":
        if getattr(type(state(est, "_loss")), "is_multiclass", False) is not True:
            raise fail(est, "several trees per iteration need a multiclass loss")
        array(init, "class_prior_", shape=(per_iteration,), kinds="f")
    in_range(est, "estimators_ shape", np.asarray(stages.shape), 1, MAX_ESTIMATORS + 1)


def validate(est: Any) -> None:
    """Dispatch on the tree-family estimator kind."""
    name = type(est).__name__
    if name in TREE_ESTIMATORS:
        check_tree_estimator(est)
    elif name.startswith("GradientBoosting"):
        check_gradient_boosting(est)
    else:
        check_forest(est)
