"""The model zoo: realistic fitted scikit-learn models of every kind people serve with MLServer,
each with the inputs a client would send it (issue 26's acceptance: every one serves under the
default policy and predicts exactly like plain joblib; tests/integration/test_zoo.py).

User-defined classes and functions come from examples/user_code/acme_models, which the loader
imports only through `loader serve --user-code examples/user_code` (never from the models root).
XGBoost and LightGBM's scikit-learn wrappers come from the `boosters` extra (scripts/setup.sh
installs it; the loader image has them with LOADER_EXTRAS=boosters).

    python -m tests.model_zoo DIR    # DIR/models/zoo-<name>/model.joblib, signed by a local authority
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from tests.model_corpus import COMMON, FAMILIES, _data, _regression, _three_classes
from tests.support import Authority, start_authority

USER_CODE = Path(__file__).resolve().parent.parent / "examples" / "user_code"

ROWS = 20
# Inputs a client sends: rows the models never saw in training.
ARRAY = _data(rows=ROWS, seed=1)[0]


@dataclass(frozen=True)
class ZooModel:
    """A fitted estimator, the kind it stands for, and what to send it (an array, a DataFrame
    or a 1-D array of strings)."""

    kind: str
    estimator: Any
    inputs: np.ndarray | pd.DataFrame


KINDS = (
    "linear", "svm", "tree", "boosting", "knn", "naive-bayes", "mlp", "dataframe-pipeline", "text",
    "meta-estimator", "search", "clustering", "anomaly-detection", "user-code", "other",
)


def _frame(columns: str, rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """The mixed-dtype frames of tests/model_corpus.py (a, b, c floats; colour a string)."""
    x = _data(rows=rows, seed=seed)[0]
    available = {"a": x[:, 0], "b": x[:, 1], "c": x[:, 3], "colour": np.where(x[:, 2] > 0, "red", "blue")}
    return pd.DataFrame({name: available[name] for name in columns.split(",")})


TEXTS = ["signed model", "hostile pickle", "signed artefact", "pickle payload", "verified bundle", "unsafe opcode"]
TEXT_LABELS = [0, 1, 0, 1, 0, 1]
QUERIES = np.array(["a signed bundle", "pickle opcode", "model artefact", "hostile payload", "nothing known"] * 4)


def _customers(rows: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A realistic tabular frame: numbers with gaps, an integer count, categories, free text."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 15, rows)
    income[rng.random(rows) < 0.1] = np.nan
    frame = pd.DataFrame({
        "income": income,
        "visits": rng.integers(0, 30, rows),
        "plan": rng.choice(["free", "pro", "team"], rows),
        "note": rng.choice(["renewed early", "asked for refund", "happy customer", "late payment"], rows),
    })
    churned = ((frame["plan"] == "free") & (frame["visits"] < 10)) | frame["note"].eq("asked for refund")
    return frame, churned.map({True: "churn", False: "stay"}).to_numpy()


def _from_corpus(only: list[str] | None = None) -> dict[str, ZooModel]:
    kinds = {
        "logistic-regression": "linear", "ridge": "linear", "svc": "svm", "decision-tree": "tree",
        "random-forest": "tree", "hist-gradient-boosting": "boosting", "knn": "knn", "mlp": "mlp",
        "pandas-column-transformer-pipeline": "dataframe-pipeline", "tfidf-naive-bayes": "text",
        "column-transformer-passthrough-frame": "dataframe-pipeline", "column-transformer-passthrough": "other",
        "function-transformer-log1p": "other", "transformed-target-log1p": "meta-estimator",
        "transformed-target-scaler": "meta-estimator", "grid-search": "search", "randomized-search": "search",
        "voting-soft-weighted": "meta-estimator", "voting-hard": "meta-estimator", "voting-regressor": "meta-estimator",
        "stacking": "meta-estimator", "stacking-regressor-passthrough": "meta-estimator", "bagging": "meta-estimator",
        "bagging-regressor": "meta-estimator", "adaboost": "boosting", "adaboost-regressor": "boosting",
        "calibrated-sigmoid": "meta-estimator", "calibrated-isotonic": "meta-estimator",
        "calibrated-isotonic-binary": "meta-estimator", "kmeans": "clustering", "minibatch-kmeans": "clustering",
        "isolation-forest": "anomaly-detection",
    }
    inputs: dict[str, Any] = {
        "pandas-column-transformer-pipeline": _frame("a,b,colour", ROWS, 1),
        "column-transformer-passthrough-frame": _frame("a,b,c,colour", ROWS, 1),
        "tfidf-naive-bayes": QUERIES,
        "function-transformer-log1p": ARRAY,
    }
    builders: dict[str, Callable[[], object]] = {**FAMILIES, **COMMON}
    return {name: ZooModel(kind, builders[name](), inputs.get(name, ARRAY)) for name, kind in kinds.items() if only is None or name in only}


def _added() -> dict[str, Callable[[], ZooModel]]:
    """Kinds and variants tests/model_corpus.py does not build."""
    from sklearn import (
        cluster,
        compose,
        covariance,
        decomposition,
        discriminant_analysis,
        ensemble,
        feature_extraction,
        gaussian_process,
        impute,
        isotonic,
        kernel_approximation,
        kernel_ridge,
        linear_model,
        mixture,
        multiclass,
        multioutput,
        naive_bayes,
        neighbors,
        neural_network,
        pipeline,
        preprocessing,
        svm,
        tree,
    )
    from sklearn.feature_selection import SelectKBest
    from sklearn.model_selection import GridSearchCV

    x2, y2 = _data()
    x3, y3 = _three_classes()
    xr, yr = _regression()
    make = pipeline.make_pipeline

    def array(kind: str, estimator: Any, x: np.ndarray, y: Any = None) -> Callable[[], ZooModel]:
        return lambda: ZooModel(kind, estimator.fit(x) if y is None else estimator.fit(x, y), ARRAY)

    def customers_pipeline(model: Any, frame: pd.DataFrame | None = None, labels: np.ndarray | None = None) -> Any:
        if frame is None or labels is None:
            frame, labels = _customers()
        columns = compose.ColumnTransformer([
            ("numbers", make(impute.SimpleImputer(strategy="median"), preprocessing.StandardScaler()), ["income", "visits"]),
            ("plan", preprocessing.OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ("note", feature_extraction.text.TfidfVectorizer(), "note"),
        ])
        return make(columns, model).fit(frame, labels)

    def ordinal_boosting() -> ZooModel:
        frame, labels = _customers()
        columns = compose.ColumnTransformer(
            [("cat", preprocessing.OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["plan", "note"])],
            remainder="passthrough",
        )
        model = make(columns, ensemble.HistGradientBoostingClassifier(max_iter=20, categorical_features=[0, 1], random_state=0))
        return ZooModel("dataframe-pipeline", model.fit(frame, labels), _customers(ROWS, 1)[0])

    def count_vectorizer() -> ZooModel:
        model = make(feature_extraction.text.CountVectorizer(ngram_range=(1, 2)), linear_model.LogisticRegression())
        return ZooModel("text", model.fit(TEXTS * 4, TEXT_LABELS * 4), QUERIES)

    def whole_grid_search_frame() -> ZooModel:
        frame, labels = _customers()
        base = customers_pipeline(linear_model.LogisticRegression(max_iter=500))
        search = GridSearchCV(base, {"logisticregression__C": [0.1, 1.0], "columntransformer__note__ngram_range": [(1, 1), (1, 2)]}, cv=3)
        return ZooModel("search", search.fit(frame, labels), _customers(ROWS, 1)[0])

    sys.path.insert(0, str(USER_CODE))
    import acme_models as acme
    import lightgbm
    import xgboost

    def customers_codes() -> tuple[pd.DataFrame, np.ndarray]:
        frame, labels = _customers()
        return frame, (labels == "churn").astype(int)  # XGBoost takes classes 0..n-1 only

    return {
        # linear
        "linear-regression": array("linear", linear_model.LinearRegression(), xr, yr),
        "lasso": array("linear", linear_model.Lasso(alpha=0.01), xr, yr),
        "elastic-net": array("linear", linear_model.ElasticNet(alpha=0.01), xr, yr),
        "poisson-regressor": array("linear", linear_model.PoissonRegressor(), xr, yr),
        "sgd-classifier-log-loss": array("linear", make(preprocessing.StandardScaler(), linear_model.SGDClassifier(loss="log_loss", random_state=0)), x3, y3),
        "ridge-classifier": array("linear", linear_model.RidgeClassifier(), x3, y3),
        "logistic-multiclass-scaled": array("linear", make(preprocessing.StandardScaler(), linear_model.LogisticRegression(C=0.5)), x3, y3),
        "lda": array("linear", discriminant_analysis.LinearDiscriminantAnalysis(), x3, y3),
        "qda": array("other", discriminant_analysis.QuadraticDiscriminantAnalysis(), x3, y3),
        # SVM
        "svc-probability": array("svm", svm.SVC(probability=True, random_state=0), x3, y3),
        "linear-svc": array("svm", make(preprocessing.StandardScaler(), svm.LinearSVC()), x2, y2),
        "nu-svc": array("svm", svm.NuSVC(), x2, y2),
        "svr": array("svm", make(preprocessing.StandardScaler(), svm.SVR(C=3.0)), xr, yr),
        # trees and boosting
        "decision-tree-regressor": array("tree", tree.DecisionTreeRegressor(max_depth=5, random_state=0), xr, yr),
        # Threads (n_jobs) on a classifier only: a forest regressor's threads add the trees'
        # floats in a varying order, so plain joblib does not repeat its own last bits.
        "extra-trees-n-jobs": array("tree", ensemble.ExtraTreesClassifier(n_estimators=10, n_jobs=-1, random_state=0), x3, y3),
        "random-forest-regressor": array("tree", ensemble.RandomForestRegressor(n_estimators=8, random_state=0), xr, yr),
        "gradient-boosting": array("boosting", ensemble.GradientBoostingClassifier(n_estimators=20, random_state=0), x3, y3),
        "gradient-boosting-regressor": array("boosting", ensemble.GradientBoostingRegressor(n_estimators=20, random_state=0), xr, yr),
        "hist-gradient-boosting-regressor": array("boosting", ensemble.HistGradientBoostingRegressor(max_iter=20), xr, yr),
        # k-NN
        "knn-regressor-distance": array("knn", neighbors.KNeighborsRegressor(weights="distance"), xr, yr),
        "nearest-centroid": array("knn", neighbors.NearestCentroid(), x3, y3),
        # naive Bayes
        "gaussian-nb": array("naive-bayes", naive_bayes.GaussianNB(), x3, y3),
        "bernoulli-nb": array("naive-bayes", naive_bayes.BernoulliNB(), x2, y2),
        # MLP
        "mlp-regressor": array("mlp", make(preprocessing.StandardScaler(), neural_network.MLPRegressor(hidden_layer_sizes=(16,), max_iter=200, random_state=0)), xr, yr),
        # pipelines on DataFrames, text
        "customers-frame-pipeline": lambda: ZooModel("dataframe-pipeline", customers_pipeline(linear_model.LogisticRegression(max_iter=500)), _customers(ROWS, 1)[0]),
        "customers-ordinal-hist-boosting": ordinal_boosting,
        "count-vectorizer-logistic": count_vectorizer,
        # ... and the same through the sandbox (types outside the allowlist): strings, gaps, free text
        "tfidf-one-vs-rest": lambda: ZooModel("text", make(feature_extraction.text.TfidfVectorizer(), multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression())).fit(TEXTS * 4, TEXT_LABELS * 4), QUERIES),
        "customers-frame-one-vs-rest": lambda: ZooModel("dataframe-pipeline", customers_pipeline(
            multiclass.OneVsRestClassifier(linear_model.LogisticRegression())), _customers(ROWS, 1)[0]),
        # meta-estimators and a whole GridSearchCV over a DataFrame pipeline
        "one-vs-rest": array("meta-estimator", multiclass.OneVsRestClassifier(linear_model.LogisticRegression()), x3, y3),
        "one-vs-one": array("meta-estimator", multiclass.OneVsOneClassifier(svm.LinearSVC()), x3, y3),
        "multi-output-regressor": array("meta-estimator", multioutput.MultiOutputRegressor(linear_model.Ridge()), xr, np.stack([yr, -yr], axis=1)),
        "select-k-best-pipeline": array("meta-estimator", make(SelectKBest(k=3), ensemble.RandomForestClassifier(n_estimators=5, random_state=0)), x2, y2),
        "grid-search-frame-pipeline": whole_grid_search_frame,
        # clustering and anomaly detection
        "birch": array("clustering", cluster.Birch(n_clusters=3), x2),
        "gaussian-mixture": array("clustering", mixture.GaussianMixture(n_components=3, random_state=0), x2),
        "one-class-svm": array("anomaly-detection", svm.OneClassSVM(nu=0.1), x2),
        "local-outlier-factor-novelty": array("anomaly-detection", neighbors.LocalOutlierFactor(novelty=True), x2),
        "elliptic-envelope": array("anomaly-detection", covariance.EllipticEnvelope(random_state=0), x2),
        # other common preprocessing and estimators
        "pca-logistic": array("other", make(preprocessing.StandardScaler(), decomposition.PCA(3), linear_model.LogisticRegression()), x3, y3),
        "polynomial-ridge": array("other", make(preprocessing.PolynomialFeatures(2), linear_model.Ridge()), xr, yr),
        "spline-ridge": array("other", make(preprocessing.SplineTransformer(), linear_model.Ridge()), xr, yr),
        "kbins-logistic": array("other", make(preprocessing.KBinsDiscretizer(4, quantile_method="averaged_inverted_cdf"), linear_model.LogisticRegression()), x3, y3),
        "nystroem-sgd": array("other", make(kernel_approximation.Nystroem(n_components=20, random_state=0), linear_model.SGDClassifier(random_state=0)), x2, y2),
        "kernel-ridge": array("other", kernel_ridge.KernelRidge(kernel="rbf"), xr, yr),
        "huber-regressor": array("linear", linear_model.HuberRegressor(), xr, yr),
        "gaussian-process-classifier": array("other", gaussian_process.GaussianProcessClassifier(random_state=0), x2, y2),
        "complement-nb-counts": lambda: ZooModel("naive-bayes", make(feature_extraction.text.CountVectorizer(), naive_bayes.ComplementNB()).fit(
            TEXTS * 4, TEXT_LABELS * 4), QUERIES),
        "isotonic-1d": lambda: ZooModel("other", isotonic.IsotonicRegression(out_of_bounds="clip").fit(xr[:, 0], yr), ARRAY[:, 0].copy()),
        "target-encoder-frame": lambda: ZooModel("dataframe-pipeline", make(compose.ColumnTransformer(
            [("plan", preprocessing.TargetEncoder(random_state=0), ["plan", "note"])], remainder=impute.SimpleImputer()),
            linear_model.LogisticRegression()).fit(*_customers()), _customers(ROWS, 1)[0]),
        # XGBoost and LightGBM's scikit-learn wrappers (served in the sandbox: outside the allowlist).
        # n_jobs asks for threads: OpenMP in the sandbox must run on one core instead of failing.
        "xgb-classifier": array("boosting", xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0), x3, y3),
        "xgb-regressor": array("boosting", xgboost.XGBRegressor(n_estimators=20, max_depth=3, random_state=0), xr, yr),
        "xgb-classifier-n-jobs": array("boosting", xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=4, random_state=0), x2, y2),
        "lgbm-classifier": array("boosting", lightgbm.LGBMClassifier(n_estimators=20, random_state=0, verbose=-1), x3, y3),
        "lgbm-regressor": array("boosting", lightgbm.LGBMRegressor(n_estimators=20, random_state=0, verbose=-1), xr, yr),
        "lgbm-regressor-n-jobs": array("boosting", lightgbm.LGBMRegressor(n_estimators=20, n_jobs=4, random_state=0, verbose=-1), xr, yr),
        "customers-frame-xgb": lambda: ZooModel("dataframe-pipeline", customers_pipeline(xgboost.XGBClassifier(
            n_estimators=20, max_depth=3, random_state=0), *customers_codes()), _customers(ROWS, 1)[0]),
        "customers-frame-lgbm": lambda: ZooModel("dataframe-pipeline", customers_pipeline(lightgbm.LGBMClassifier(
            n_estimators=20, random_state=0, verbose=-1)), _customers(ROWS, 1)[0]),
        # user-defined estimators and functions (importable only through --user-code)
        "user-classifier": array("user-code", acme.NearestCentroidScorer(0.5), x3, y3),
        "user-function-pipeline": array("user-code", make(preprocessing.FunctionTransformer(acme.log_ratio), linear_model.LogisticRegression()), x2, y2),
        "user-transformer-forest": array("user-code", make(acme.Winsorizer(), ensemble.RandomForestClassifier(n_estimators=5, random_state=0)), x2, y2),
        "user-regressor": array("user-code", acme.ShrunkMeanRegressor(0.5), xr, yr),
        "user-target-transform": array("user-code", compose.TransformedTargetRegressor(linear_model.Ridge(), func=acme.signed_log, inverse_func=acme.signed_exp), xr, yr),
        "user-function-in-frame-columns": lambda: ZooModel("user-code", make(
            compose.ColumnTransformer([("ab", preprocessing.FunctionTransformer(acme.log_ratio, validate=True), ["a", "b"]),
                                       ("colour", preprocessing.OneHotEncoder(), ["colour"])]),
            linear_model.LogisticRegression()).fit(_frame("a,b,colour"), _data()[1]), _frame("a,b,colour", ROWS, 1)),
    }


def zoo(only: list[str] | None = None) -> dict[str, ZooModel]:
    """Every model of the zoo (or those named in `only`), fitted, by name."""
    models = _from_corpus(only)
    models.update({name: build() for name, build in _added().items() if only is None or name in only})
    missing = set(only or ()) - set(models)
    if missing:
        raise KeyError(f"not in the zoo: {sorted(missing)}")
    return models


def write(models: dict[str, ZooModel], directory: Path, authority: Authority | None = None) -> dict[str, Path]:
    """Each model as DIR/zoo-<name>/model.joblib, with its Sigstore bundle beside it when an
    `authority` signs; the paths by name."""
    paths = {}
    for name, model in models.items():
        folder = directory / f"zoo-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = folder / "model.joblib"
        joblib.dump(model.estimator, paths[name])
        if authority is not None:
            authority.sign_file(paths[name])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write every zoo model as DIR/models/zoo-<name>/model.joblib, signed by a "
                                     "local authority whose trust config is DIR/authority/trust_config.json.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--unsigned", action="store_true", help="write the models only")
    args = parser.parse_args(argv)
    models = zoo()
    authority = None if args.unsigned else start_authority(args.directory / "authority")
    try:
        for name, path in write(models, args.directory / "models", authority).items():
            print(f"{name}\t{models[name].kind}\t{path}")
    finally:
        if authority is not None:
            authority.server.shutdown()
            print(f"trust config: {authority.trust_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
