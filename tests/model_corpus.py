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


# -- issue 27: models people ship that need no code beyond scikit-learn and NumPy ------------------

def _regression() -> tuple[np.ndarray, np.ndarray]:
    x, _ = _data()
    return x, np.abs(x[:, 0] * 2 + x[:, 1]) + 0.5


def _three_classes() -> tuple[np.ndarray, np.ndarray]:
    x, _ = _data()
    return x, (np.digitize(x[:, 0], [-0.5, 0.5])).astype(int)


def _passthrough_frame() -> object:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = _data()
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 3], "colour": np.where(x[:, 2] > 0, "red", "blue")})
    columns = ColumnTransformer(
        [("num", StandardScaler(), ["a"]), ("keep", "passthrough", ["b"]), ("cat", OneHotEncoder(), ["colour"])],
        remainder="passthrough",
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, y)


def _passthrough_array() -> object:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = ColumnTransformer([("num", StandardScaler(), [0, 1]), ("keep", "passthrough", [2])], remainder="passthrough")
    return make_pipeline(columns, RandomForestClassifier(n_estimators=5, random_state=0)).fit(*_data())


def _log_features() -> object:
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = _regression()
    return make_pipeline(FunctionTransformer(np.abs), FunctionTransformer(np.log1p, inverse_func=np.expm1), Ridge()).fit(x, y)


def _log_target() -> object:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import Ridge

    return TransformedTargetRegressor(Ridge(), func=np.log1p, inverse_func=np.expm1).fit(*_regression())


def _scaled_target() -> object:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    return TransformedTargetRegressor(DecisionTreeRegressor(max_depth=4), transformer=StandardScaler()).fit(*_regression())


def _grid_search() -> object:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression())
    return GridSearchCV(pipeline, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3).fit(*_data())


def _randomized_search() -> object:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import RandomizedSearchCV

    grid = {"max_depth": [2, 3, None], "n_estimators": [3, 5]}
    return RandomizedSearchCV(RandomForestRegressor(random_state=0), grid, n_iter=3, cv=3, random_state=0).fit(*_regression())


def _voting() -> object:
    from sklearn.ensemble import VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    members = [("lr", LogisticRegression()), ("nb", GaussianNB()), ("dt", DecisionTreeClassifier(max_depth=3, random_state=0))]
    return VotingClassifier(members, voting="soft", weights=[2, 1, 1]).fit(*_three_classes())


def _hard_voting() -> object:
    from sklearn.ensemble import VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    return VotingClassifier([("lr", LogisticRegression()), ("svc", SVC())]).fit(*_three_classes())


def _voting_regressor() -> object:
    from sklearn.ensemble import VotingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsRegressor

    return VotingRegressor([("ridge", Ridge()), ("knn", KNeighborsRegressor())]).fit(*_regression())


def _stacking() -> object:
    from sklearn.ensemble import RandomForestClassifier, StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    members = [("rf", RandomForestClassifier(n_estimators=5, random_state=0)), ("svc", SVC(random_state=0))]
    return StackingClassifier(members, final_estimator=LogisticRegression(), cv=3).fit(*_three_classes())


def _stacking_regressor() -> object:
    from sklearn.ensemble import StackingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeRegressor

    members = [("ridge", Ridge()), ("tree", DecisionTreeRegressor(max_depth=3, random_state=0))]
    return StackingRegressor(members, cv=3, passthrough=True).fit(*_regression())


def _bagging() -> object:
    from sklearn.ensemble import BaggingClassifier

    return BaggingClassifier(n_estimators=5, max_features=0.5, bootstrap_features=True, random_state=0).fit(*_three_classes())


def _bagging_regressor() -> object:
    from sklearn.ensemble import BaggingRegressor
    from sklearn.linear_model import Ridge

    return BaggingRegressor(Ridge(), n_estimators=4, random_state=0).fit(*_regression())


def _adaboost() -> object:
    from sklearn.ensemble import AdaBoostClassifier

    return AdaBoostClassifier(n_estimators=10, random_state=0).fit(*_three_classes())


def _adaboost_regressor() -> object:
    from sklearn.ensemble import AdaBoostRegressor

    return AdaBoostRegressor(n_estimators=10, random_state=0).fit(*_regression())


def _calibrated(method: str) -> Callable[[], object]:
    def build() -> object:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import LinearSVC

        return CalibratedClassifierCV(LinearSVC(), method=method, cv=3).fit(*_three_classes())

    return build


def _calibrated_binary() -> object:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier

    return CalibratedClassifierCV(RandomForestClassifier(n_estimators=5, random_state=0), method="isotonic", cv=3).fit(*_data())


def _kmeans() -> object:
    from sklearn.cluster import KMeans

    return KMeans(4, n_init=2, random_state=0).fit(_data()[0])


def _minibatch_kmeans() -> object:
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(4, n_init=2, random_state=0).fit(_data()[0])


def _isolation_forest() -> object:
    from sklearn.ensemble import IsolationForest

    return IsolationForest(n_estimators=10, max_features=0.5, random_state=0).fit(_data()[0])


# Issue 27's table (without user code and third-party boosters, which are served in the sandbox):
# each must load through runtime.SigstoreModel under the default policy, in process.
COMMON: dict[str, Callable[[], object]] = {
    "column-transformer-passthrough-frame": _passthrough_frame,
    "column-transformer-passthrough": _passthrough_array,
    "function-transformer-log1p": _log_features,
    "transformed-target-log1p": _log_target,
    "transformed-target-scaler": _scaled_target,
    "grid-search": _grid_search,
    "randomized-search": _randomized_search,
    "voting-soft-weighted": _voting,
    "voting-hard": _hard_voting,
    "voting-regressor": _voting_regressor,
    "stacking": _stacking,
    "stacking-regressor-passthrough": _stacking_regressor,
    "bagging": _bagging,
    "bagging-regressor": _bagging_regressor,
    "adaboost": _adaboost,
    "adaboost-regressor": _adaboost_regressor,
    "calibrated-sigmoid": _calibrated("sigmoid"),
    "calibrated-isotonic": _calibrated("isotonic"),
    "calibrated-isotonic-binary": _calibrated_binary,
    "kmeans": _kmeans,
    "minibatch-kmeans": _minibatch_kmeans,
    "isolation-forest": _isolation_forest,
}


def large_estimator(megabytes: int) -> object:
    """A k-NN classifier stores its training data: `megabytes` of float64 arrays (the bench's
    large model)."""
    from sklearn.neighbors import KNeighborsClassifier

    rows = megabytes * 2**20 // (64 * 8)
    rng = np.random.default_rng(0)
    x = rng.random((rows, 64))
    return KNeighborsClassifier(algorithm="brute").fit(x, rng.integers(0, 10, rows))
