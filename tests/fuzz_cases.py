"""Honest models of every allowlisted family, and the mutations the fuzzer applies to their dumps."""

from __future__ import annotations

import functools
import io
import json
import random
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import skops.io
from sklearn import (
    calibration,
    cluster,
    compose,
    decomposition,
    dummy,
    ensemble,
    impute,
    isotonic,
    linear_model,
    model_selection,
    naive_bayes,
    neighbors,
    neural_network,
    pipeline,
    preprocessing,
    svm,
    tree,
)
from sklearn.feature_extraction import text

_rng = np.random.default_rng(0)
X = _rng.normal(size=(40, 4))
Y2 = (X[:, 0] > 0).astype(int)
Y3 = _rng.integers(0, 3, 40)
R = X[:, 1] * 2 + _rng.normal(size=40)
XP = np.abs(X)
XC = _rng.integers(0, 3, (40, 4)).astype(float)
XCAT = np.hstack([X[:, :3], XC[:, 3:]])
TEXTS = ["the cat sat", "a dog ran", "the dog sat", "cats and dogs"] * 10
MIXED = np.hstack([X[:, :2], XC[:, 2:]])
# PATHS: what a caller sends to a model that reads files (a request naming the server's own files).
PATHS = ["/proc/self/environ", "/etc/hostname", "/proc/self/cmdline"] * 2
WORDS = np.array([["red"], ["green"], ["blue"], ["red"]] * 5)  # one categorical string column
WIDE = _rng.normal(size=(3, 2000))  # for the 2,000-feature crafted PolynomialFeatures
X1 = X[:, 0]  # a 1-D request (IsotonicRegression)
INPUTS: dict[str, Any] = {
    "X1": X1, "X": X, "XP": XP, "XC": XC, "XCAT": XCAT, "TEXTS": TEXTS, "MIXED": MIXED, "PATHS": PATHS, "WORDS": WORDS,
    "WIDE": WIDE,
}


@dataclass(frozen=True)
class Honest:
    name: str
    data: bytes  # skops dump
    input: str  # key into INPUTS: a request batch the model accepts


def _fitted() -> Iterator[tuple[str, Any, Any]]:
    regressors = [
        linear_model.LinearRegression(), linear_model.Ridge(), linear_model.Lasso(), linear_model.ElasticNet(),
        linear_model.SGDRegressor(), svm.LinearSVR(), svm.SVR(), svm.NuSVR(), tree.DecisionTreeRegressor(max_depth=4),
        tree.ExtraTreeRegressor(max_depth=4), ensemble.RandomForestRegressor(n_estimators=2, max_depth=3),
        ensemble.ExtraTreesRegressor(n_estimators=2, max_depth=3), ensemble.GradientBoostingRegressor(n_estimators=2),
        ensemble.HistGradientBoostingRegressor(max_iter=2), neighbors.KNeighborsRegressor(), dummy.DummyRegressor(),
        neural_network.MLPRegressor(hidden_layer_sizes=(5,), max_iter=5),
    ]
    for model in regressors:
        yield type(model).__name__, model.fit(X, R), X
    classifiers = [
        linear_model.LogisticRegression(), linear_model.SGDClassifier(), linear_model.RidgeClassifier(),
        linear_model.Perceptron(), svm.LinearSVC(), svm.SVC(probability=True), svm.NuSVC(nu=0.3),
        tree.DecisionTreeClassifier(max_depth=4), tree.ExtraTreeClassifier(max_depth=4),
        ensemble.RandomForestClassifier(n_estimators=2, max_depth=3), ensemble.ExtraTreesClassifier(n_estimators=2, max_depth=3),
        ensemble.GradientBoostingClassifier(n_estimators=2), ensemble.HistGradientBoostingClassifier(max_iter=2),
        neighbors.KNeighborsClassifier(algorithm="kd_tree"), neighbors.KNeighborsClassifier(algorithm="ball_tree"),
        neighbors.KNeighborsClassifier(algorithm="brute", weights="distance"), naive_bayes.GaussianNB(),
        neural_network.MLPClassifier(hidden_layer_sizes=(5,), max_iter=5), dummy.DummyClassifier(),
    ]
    for labels, suffix in ((Y2, "binary"), (Y3, "3class")):
        for model in classifiers:
            yield f"{type(model).__name__}-{suffix}", _clone(model).fit(X, labels), X
        for model in (naive_bayes.MultinomialNB(), naive_bayes.BernoulliNB(), naive_bayes.ComplementNB()):
            yield f"{type(model).__name__}-{suffix}", model.fit(XP, labels), XP
        yield f"CategoricalNB-{suffix}", naive_bayes.CategoricalNB().fit(XC, labels), XC
    yield "HistGB-categorical", ensemble.HistGradientBoostingClassifier(max_iter=2, categorical_features=[3]).fit(XCAT, Y3), XCAT
    for model in (preprocessing.StandardScaler(), preprocessing.MinMaxScaler(), preprocessing.MaxAbsScaler(),
                  preprocessing.RobustScaler(), preprocessing.Normalizer(), impute.SimpleImputer(),
                  decomposition.PCA(2), preprocessing.PolynomialFeatures(2)):
        yield type(model).__name__, model.fit(X), X
    for model in (preprocessing.OneHotEncoder(handle_unknown="ignore"), preprocessing.OrdinalEncoder(),
                  preprocessing.OneHotEncoder(max_categories=2, drop="first", sparse_output=False)):
        yield type(model).__name__, model.fit(XC), XC
    for model in (text.CountVectorizer(), text.TfidfVectorizer(ngram_range=(1, 2)), text.HashingVectorizer(n_features=64)):
        yield type(model).__name__, model.fit(TEXTS), TEXTS
    yield "text-pipeline", pipeline.make_pipeline(text.TfidfVectorizer(), linear_model.LogisticRegression()).fit(TEXTS, Y2), TEXTS
    yield "scaler-pca-svc", pipeline.make_pipeline(preprocessing.StandardScaler(), decomposition.PCA(3), svm.SVC()).fit(X, Y3), X
    columns = compose.ColumnTransformer([("num", preprocessing.StandardScaler(), [0, 1]),
                                         ("cat", preprocessing.OneHotEncoder(handle_unknown="ignore"), [2, 3])])
    yield "column-forest", pipeline.Pipeline([("ct", columns), ("rf", ensemble.RandomForestClassifier(n_estimators=2, max_depth=3))]).fit(MIXED, Y2), MIXED
    union = pipeline.make_union(preprocessing.StandardScaler(), decomposition.PCA(2))
    yield "union-knn", pipeline.make_pipeline(union, neighbors.KNeighborsClassifier()).fit(X, Y2), X
    yield from _fitted_meta()


def _fitted_meta() -> Iterator[tuple[str, Any, Any]]:
    """Issue 27's families: passthrough, NumPy functions, meta-estimators, clustering, searches."""
    passthrough = compose.ColumnTransformer([("num", preprocessing.StandardScaler(), [0]), ("keep", "passthrough", [1])], remainder="passthrough")
    yield "column-passthrough", pipeline.make_pipeline(passthrough, linear_model.LogisticRegression()).fit(X, Y3), X
    yield "function-log1p", pipeline.make_pipeline(preprocessing.FunctionTransformer(np.log1p, inverse_func=np.expm1), linear_model.Ridge()).fit(XP, R), XP
    yield "function-clip", preprocessing.FunctionTransformer(np.clip, kw_args={"a_min": -1.0, "a_max": 1.0}).fit(X), X
    yield "target-log1p", compose.TransformedTargetRegressor(linear_model.Ridge(), func=np.log1p, inverse_func=np.expm1).fit(X, np.abs(R)), X
    yield "target-scaler", compose.TransformedTargetRegressor(tree.DecisionTreeRegressor(max_depth=3), transformer=preprocessing.StandardScaler()).fit(X, R), X
    members = [("lr", linear_model.LogisticRegression()), ("dt", tree.DecisionTreeClassifier(max_depth=3))]
    for voting in ("hard", "soft"):
        yield f"voting-{voting}", ensemble.VotingClassifier(members, voting=voting, weights=[2, 1]).fit(X, Y3), X
    yield "voting-regressor", ensemble.VotingRegressor([("r", linear_model.Ridge()), ("dt", tree.DecisionTreeRegressor(max_depth=3))]).fit(X, R), X
    for labels, suffix in ((Y2, "binary"), (Y3, "3class")):
        yield f"stacking-{suffix}", ensemble.StackingClassifier(members, cv=2).fit(X, labels), X
        yield f"bagging-{suffix}", ensemble.BaggingClassifier(n_estimators=3, max_features=0.75, random_state=0).fit(X, labels), X
        yield f"adaboost-{suffix}", ensemble.AdaBoostClassifier(n_estimators=3, random_state=0).fit(X, labels), X
        for method in ("sigmoid", "isotonic"):
            model = calibration.CalibratedClassifierCV(tree.DecisionTreeClassifier(max_depth=3), method=method, cv=2)
            yield f"calibrated-{method}-{suffix}", model.fit(X, labels), X
    yield "stacking-regressor", ensemble.StackingRegressor([("r", linear_model.Ridge()), ("dt", tree.DecisionTreeRegressor(max_depth=3))], cv=2, passthrough=True).fit(X, R), X
    yield "bagging-regressor", ensemble.BaggingRegressor(n_estimators=3, random_state=0).fit(X, R), X
    yield "adaboost-regressor", ensemble.AdaBoostRegressor(n_estimators=3, random_state=0).fit(X, R), X
    yield "isotonic", isotonic.IsotonicRegression().fit(X1, R), X1
    yield "kmeans", cluster.KMeans(3, n_init=1, random_state=0).fit(X), X
    yield "minibatch-kmeans", cluster.MiniBatchKMeans(3, n_init=1, random_state=0).fit(X), X
    yield "isolation-forest", ensemble.IsolationForest(n_estimators=3, max_features=0.75, random_state=0).fit(X), X
    grid = model_selection.GridSearchCV(pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression()), {"logisticregression__C": [0.1, 1.0]}, cv=2)
    yield "grid-search", grid.fit(X, Y3), X
    search = model_selection.RandomizedSearchCV(tree.DecisionTreeRegressor(), {"max_depth": [2, 3]}, n_iter=2, cv=2, random_state=0)
    yield "randomized-search", search.fit(X, R), X


def _clone(model: Any) -> Any:
    from sklearn.base import clone

    return clone(model)


@functools.cache
def honest_models() -> tuple[Honest, ...]:
    """One fitted model per allowlisted family and shape of use, dumped with skops."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(Honest(name, skops.io.dumps(model), _input_key(x)) for name, model, x in _fitted())


def _input_key(x: Any) -> str:
    return next(key for key, value in INPUTS.items() if value is x)


# -- mutations ------------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 3, 255, 256, 2**15, 2**31 - 1, 2**31, -(2**31), 2**32, 2**63 - 1, 10**6]
INTERESTING_FLOATS = [0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), -float("inf"), 1e-308]


class Archive:
    """A skops archive opened for editing: its schema and members."""

    def __init__(self, data: bytes) -> None:
        source = zipfile.ZipFile(io.BytesIO(data))
        self.members = {n: source.read(n) for n in source.namelist() if n != "schema.json"}
        self.schema = json.loads(source.read("schema.json"))

    def dumps(self) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            for name, content in self.members.items():
                target.writestr(name, content)
            target.writestr("schema.json", json.dumps(self.schema))
        return out.getvalue()

    def nodes(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        stack: list[Any] = [self.schema]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if "__loader__" in item:
                    found.append(item)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        return found


def _load_npy(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _save_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _array_members(archive: Archive) -> list[str]:
    return [n for n in archive.members if n.endswith(".npy")]


def mutate_values(archive: Archive, rng: random.Random) -> str:
    names = _array_members(archive)
    if not names:
        return "no arrays"
    name = rng.choice(names)
    array = _load_npy(archive.members[name]).copy()
    if array.size == 0:
        return "empty"
    flat = array.reshape(-1) if array.dtype.names is None else array.reshape(-1)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(flat.size)
        if array.dtype.names:
            field = rng.choice(array.dtype.names)
            flat[field][i] = _value(array.dtype[field], rng, flat[field][i])
        else:
            flat[i] = _value(array.dtype, rng, flat[i])
    archive.members[name] = _save_npy(array)
    return f"values of {name}"


def _value(dtype: np.dtype, rng: random.Random, old: Any) -> Any:
    kind = dtype.kind
    if kind in "iu":
        choice = rng.choice(INTERESTING_INTS + [int(old) + rng.randint(-3, 3)])
        info = np.iinfo(dtype)
        return max(min(choice, int(info.max)), int(info.min))
    if kind == "f":
        return rng.choice(INTERESTING_FLOATS + [float(old) * rng.choice([-1, 2, 1e6])])
    if kind == "b":
        return not bool(old)
    return old


def mutate_shape(archive: Archive, rng: random.Random) -> str:
    names = _array_members(archive)
    if not names:
        return "no arrays"
    name = rng.choice(names)
    array = _load_npy(archive.members[name])
    shape = list(array.shape) or [1]
    axis = rng.randrange(len(shape))
    shape[axis] = max(0, rng.choice([0, 1, shape[axis] - 1, shape[axis] + 1, shape[axis] * 2, 64]))
    if rng.random() < 0.2:
        shape = shape + [1] if rng.random() < 0.5 else shape[:-1] or [1]
    resized = np.resize(array, tuple(shape)) if array.size else np.zeros(tuple(shape), dtype=array.dtype)
    archive.members[name] = _save_npy(resized)
    return f"shape of {name} -> {tuple(shape)}"


def mutate_dtype(archive: Archive, rng: random.Random) -> str:
    names = _array_members(archive)
    if not names:
        return "no arrays"
    name = rng.choice(names)
    array = _load_npy(archive.members[name])
    if array.dtype.names:
        return "structured"
    target = rng.choice([np.int8, np.int32, np.int64, np.uint32, np.float32, np.float64, np.bool_, np.float16])
    archive.members[name] = _save_npy(array.astype(target))
    return f"dtype of {name} -> {np.dtype(target)}"


def mutate_json(archive: Archive, rng: random.Random) -> str:
    leaves = [n for n in archive.nodes() if n["__loader__"] == "JsonNode"]
    if not leaves:
        return "no json"
    node = rng.choice(leaves)
    value = json.loads(node["content"])
    if isinstance(value, bool) or value is None:
        new: Any = rng.choice([True, False, None, 0, "x"])
    elif isinstance(value, int):
        new = rng.choice(INTERESTING_INTS + [value + 1, value - 1])
    elif isinstance(value, float):
        new = rng.choice([0.0, -1.0, 1e300, value * 10])
    elif isinstance(value, str):
        new = rng.choice(["", "filename", "file", "precomputed", "kd_tree", "brute", value * 2, "../../etc/passwd"])
    else:
        new = value
    node["content"] = json.dumps(new)
    return f"json {value!r} -> {new!r}"


def mutate_reference(archive: Archive, rng: random.Random) -> str:
    nodes = archive.nodes()
    arrays = [n for n in nodes if n["__loader__"] == "NdArrayNode" and n.get("type") == "numpy"]
    choice = rng.random()
    if arrays and choice < 0.3:
        a, b = rng.choice(arrays), rng.choice(arrays)
        a["file"] = b["file"]
        return "array member swapped"
    with_ids = [n for n in nodes if "__id__" in n]
    if with_ids and choice < 0.6:
        a, b = rng.choice(with_ids), rng.choice(with_ids)
        a["__id__"] = b["__id__"]
        return "node id reused"
    containers = [n for n in nodes if n["__loader__"] in ("ListNode", "TupleNode") and n.get("content")]
    if containers and choice < 0.8:
        node = rng.choice(containers)
        node["content"] = node["content"][:-1] if rng.random() < 0.5 else node["content"] + node["content"][:1]
        return "container length changed"
    dicts = [n for n in nodes if n["__loader__"] == "DictNode" and isinstance(n.get("content"), dict) and n["content"]]
    if dicts:
        node = rng.choice(dicts)
        key = rng.choice(sorted(node["content"]))
        del node["content"][key]
        return f"attribute {key} dropped"
    return "nothing"


def mutate_class(archive: Archive, rng: random.Random) -> str:
    objects = [n for n in archive.nodes() if n["__loader__"] == "ObjectNode"]
    if len(objects) < 1:
        return "no objects"
    node = rng.choice(objects)
    other = rng.choice(_CLASS_POOL)
    node["__module__"], node["__class__"] = other.rsplit(".", 1)
    return f"class -> {other}"


def mutate_function(archive: Archive, rng: random.Random) -> str:
    """A function (or a type) renamed: another NumPy function, or something that is no element-wise one."""
    nodes = [n for n in archive.nodes() if n["__loader__"] in ("FunctionNode", "TypeNode")]
    if not nodes:
        return "no functions"
    node = rng.choice(nodes)
    node["__module__"], node["__class__"] = rng.choice(_FUNCTION_POOL).rsplit(".", 1)
    return f"function -> {node['__module__']}.{node['__class__']}"


_FUNCTION_POOL = [
    "numpy.log1p", "numpy.expm1", "numpy.exp", "numpy.sqrt", "numpy.clip", "numpy.square", "numpy.absolute",
    "numpy.fromfile", "numpy.load", "numpy.frompyfunc", "numpy.sin", "builtins.eval", "builtins.open", "os.system",
    "sklearn.utils.validation.check_array", "numpy.float64", "builtins.int",
]

_CLASS_POOL = [
    "sklearn.svm._classes.SVC", "sklearn.svm._classes.SVR", "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.neighbors._classification.KNeighborsClassifier", "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.preprocessing._data.StandardScaler", "sklearn.pipeline.Pipeline", "sklearn.naive_bayes.GaussianNB",
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.feature_extraction.text.CountVectorizer",
    "sklearn.ensemble._voting.VotingClassifier", "sklearn.ensemble._stacking.StackingClassifier",
    "sklearn.ensemble._bagging.BaggingClassifier", "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.ensemble._iforest.IsolationForest", "sklearn.calibration.CalibratedClassifierCV", "sklearn.cluster._kmeans.KMeans",
    "sklearn.model_selection._search.GridSearchCV", "sklearn.compose._target.TransformedTargetRegressor",
    "sklearn.isotonic.IsotonicRegression", "sklearn.preprocessing._function_transformer.FunctionTransformer",
]

MUTATORS: list[Callable[[Archive, random.Random], str]] = [
    mutate_values, mutate_values, mutate_shape, mutate_dtype, mutate_json, mutate_json, mutate_reference, mutate_class,
    mutate_function,
]


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """1 to 3 random mutations of an honest dump; returns the bytes and what was done."""
    archive = Archive(data)
    done = [rng.choice(MUTATORS)(archive, rng) for _ in range(rng.randint(1, 3))]
    return archive.dumps(), "; ".join(done)

