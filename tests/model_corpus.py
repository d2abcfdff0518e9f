"""Real scikit-learn models, saved with joblib, that the confined child must load.

The same corpus drives scripts/record-syscalls.py (which derives the child's syscall allowlist)
and tests/integration/test_confinement.py (which proves the allowlist refuses none of them).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import joblib
import numpy as np


def _data(rows: int = 200, features: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    return x, (x[:, 0] + x[:, 1] > 0).astype(int)


def _linear() -> object:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(*_data())


def _ridge() -> object:
    from sklearn.linear_model import Ridge

    x, y = _data()
    return Ridge().fit(x, y.astype(float))


def _svc() -> object:
    from sklearn.svm import SVC

    return SVC().fit(*_data())


def _tree() -> object:
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(random_state=0).fit(*_data())


def _forest() -> object:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=10, random_state=0).fit(*_data())


def _hist_gradient_boosting() -> object:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=10).fit(*_data())


def _knn() -> object:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier().fit(*_data())


def _mlp() -> object:
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(*_data())


def _pandas_pipeline() -> object:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = _data()
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "colour": np.where(x[:, 2] > 0, "red", "blue")})
    columns = ColumnTransformer([("num", StandardScaler(), ["a", "b"]), ("cat", OneHotEncoder(), ["colour"])])
    return Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, y)


def _object_array() -> object:
    from sklearn.preprocessing import OrdinalEncoder

    values = np.array([["red", "s"], ["blue", "m"], ["green", "l"]], dtype=object)
    return OrdinalEncoder().fit(values)


def _text_naive_bayes() -> object:
    """Modules the fork server has not imported: the child imports them while unpickling."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    texts = ["signed model", "hostile pickle", "signed artefact", "pickle payload"] * 5
    return make_pipeline(TfidfVectorizer(), MultinomialNB()).fit(texts, [0, 1, 0, 1] * 5)


def _large(megabytes: int) -> Callable[[], object]:
    def build() -> object:
        from sklearn.neighbors import KNeighborsClassifier

        rows = (megabytes << 20) // (64 * 8)
        x = np.random.default_rng(0).random((rows, 64))
        return KNeighborsClassifier(algorithm="brute").fit(x, np.arange(rows) % 3)

    return build


FAMILIES: dict[str, Callable[[], object]] = {
    "logistic-regression": _linear,
    "ridge": _ridge,
    "svc": _svc,
    "decision-tree": _tree,
    "random-forest": _forest,
    "hist-gradient-boosting": _hist_gradient_boosting,
    "knn": _knn,
    "mlp": _mlp,
    "pandas-column-transformer-pipeline": _pandas_pipeline,
    "object-dtype-ordinal-encoder": _object_array,
    "tfidf-naive-bayes": _text_naive_bayes,
}


def compressions() -> list[object]:
    """joblib compressions to exercise: none, zlib, gzip, lzma, bz2, and lz4 when installed."""
    methods: list[object] = [0, ("zlib", 3), ("gzip", 3), ("lzma", 3), ("bz2", 3)]
    try:
        import lz4  # noqa: F401
    except ImportError:
        pass
    else:
        methods.append(("lz4", 3))
    return methods


def dump(model: object, compress: object = 0) -> bytes:
    """`model` as joblib bytes."""
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=compress)
    return buffer.getvalue()


def corpus(large_megabytes: int = 0) -> dict[str, bytes]:
    """Every family uncompressed, the forest under each compression, and optionally a large KNN."""
    models = {name: dump(build()) for name, build in FAMILIES.items()}
    forest = _forest()
    for method in compressions()[1:]:
        assert isinstance(method, tuple)
        models[f"random-forest-{method[0]}"] = dump(forest, method)
    if large_megabytes:
        models[f"knn-{large_megabytes}mb"] = dump(_large(large_megabytes)())
    return models


def large_estimator(megabytes: int) -> object:
    """A k-NN classifier stores its training data: `megabytes` of float64 arrays (the bench's
    large model)."""
    from sklearn.neighbors import KNeighborsClassifier

    rows = megabytes * 2**20 // (64 * 8)
    rng = np.random.default_rng(0)
    x = rng.random((rows, 64))
    return KNeighborsClassifier(algorithm="brute").fit(x, rng.integers(0, 10, rows))
