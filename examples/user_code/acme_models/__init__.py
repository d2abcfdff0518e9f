"""A user's own estimator classes and functions, as a team would ship them next to its models.

The loader imports them only in its confined workers, from the read-only folder given with
`python -m loader serve --user-code examples/user_code` (never from the models root); MLServer's
process never imports them. See README, "Models the server cannot validate".
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin


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


def signed_log(y: np.ndarray) -> np.ndarray:
    """A target transform for TransformedTargetRegressor (inverse: `signed_exp`)."""
    return np.sign(y) * np.log1p(np.abs(y))


def signed_exp(y: np.ndarray) -> np.ndarray:
    """The inverse of `signed_log`."""
    return np.sign(y) * np.expm1(np.abs(y))


class Winsorizer(BaseEstimator, TransformerMixin):  # type: ignore[misc]
    """A transformer: clips each feature to the quantiles seen in training."""

    def __init__(self, quantile: float = 0.05) -> None:
        self.quantile = quantile

    def fit(self, x: np.ndarray, y: object = None) -> Winsorizer:
        values = np.asarray(x, dtype=float)
        self.low_ = np.quantile(values, self.quantile, axis=0)
        self.high_ = np.quantile(values, 1 - self.quantile, axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x, dtype=float), self.low_, self.high_)


class ShrunkMeanRegressor(BaseEstimator, RegressorMixin):  # type: ignore[misc]
    """A regressor: ridge-like least squares with a fixed shrinkage, written by hand."""

    def __init__(self, shrinkage: float = 1.0) -> None:
        self.shrinkage = shrinkage

    def fit(self, x: np.ndarray, y: np.ndarray) -> ShrunkMeanRegressor:
        values = np.asarray(x, dtype=float)
        self.mean_x_, self.mean_y_ = values.mean(axis=0), float(np.mean(y))
        centred = values - self.mean_x_
        gram = centred.T @ centred + self.shrinkage * np.eye(values.shape[1])
        self.coef_ = np.linalg.solve(gram, centred.T @ (np.asarray(y, dtype=float) - self.mean_y_))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=float) - self.mean_x_) @ self.coef_ + self.mean_y_
