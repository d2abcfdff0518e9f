"""Multi-layer perceptrons: layer matrices chain from n_features_in_ to the outputs."""

from __future__ import annotations

from typing import Any

from runtime._internal.validators.common import (
    array,
    classes,
    fail,
    integer,
    is_classifier,
    n_features,
    one_of,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._multilayer_perceptron.MLPRegressor",
)
PARTS = (
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)

ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


def validate(est: Any) -> None:
    width = n_features(est)
    coefs, intercepts = state(est, "coefs_"), state(est, "intercepts_")
    layers = integer(est, "n_layers_", 2, 1000)
    if not isinstance(coefs, list) or not isinstance(intercepts, list) or not len(coefs) == len(intercepts) == layers - 1:
        raise fail(est, f"coefs_/intercepts_ must be lists of {layers - 1} layers")
    for i, (weights, bias) in enumerate(zip(coefs, intercepts, strict=True)):
        weights = array(est, f"coefs_[{i}]", weights, shape=(width, None), kinds="f")
        width = weights.shape[1]
        array(est, f"intercepts_[{i}]", bias, shape=(width,), kinds="f")
    if integer(est, "n_outputs_", 1, 1 << 24) != width:
        raise fail(est, "n_outputs_ disagrees with the last layer")
    one_of(est, "activation", ACTIVATIONS)
    one_of(est, "out_activation_", (*ACTIVATIONS, "softmax"))
    if is_classifier(est):
        k = classes(est)
        binarizer: Any = state(est, "_label_binarizer")
        if type(binarizer).__name__ != "LabelBinarizer" or classes(binarizer) != k:
            raise fail(est, "_label_binarizer disagrees with classes_")
        if width != (1 if k == 2 else k) and one_of(est, "out_activation_", ("logistic", "softmax")) == "softmax":
            raise fail(est, f"{width} outputs for {k} classes")
