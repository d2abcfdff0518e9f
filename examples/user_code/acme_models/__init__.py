"""A user's own estimator class and function, as a team would ship them next to its models.

The loader imports them only in its confined workers, from the read-only folder given with
`python -m loader serve --user-code examples/user_code` (never from the models root); MLServer's
process never imports them. See README, "Models the server cannot validate".
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


def log_ratio(x: np.ndarray) -> np.ndarray:
    """A feature transform used in a FunctionTransformer."""
    return np.log1p(np.abs(x)) - np.log1p(np.abs(x).mean(axis=1, keepdims=True))


class NearestCentroidScorer(BaseEstimator, ClassifierMixin):  # type: ignore[misc]
    """A toy classifier: the class whose centroid is nearest, with softmax scores."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def fit(self, x: np.ndarray, y: np.ndarray) -> NearestCentroidScorer:
        self.classes_ = np.unique(y)
        self.centroids_ = np.stack([np.asarray(x)[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        distances = ((np.asarray(x, dtype=float)[:, None, :] - self.centroids_[None]) ** 2).sum(axis=2)
        scores = np.exp(-(distances - distances.min(axis=1, keepdims=True)) / self.temperature)
        return scores / scores.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]
