"""Crafted skops archives for every attack category of issue 17, built from honest dumps.

Each builder returns skops bytes that a hostile loader child could hand to the server, using only
types skops trusts by default (or named to look like them). `CASES` maps a category to its builder,
the refusal the server must give, and its positive control: the harm the archive does to a process
that loads it with skops alone (an outcome, or a `show` function's evidence), or, for an archive
skops or scikit-learn already stop, `harmless` with why.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import skops.io
from scipy import sparse
from sklearn import calibration, cluster, ensemble, preprocessing
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree
from sklearn.utils.validation import check_array

from tests.fuzz_cases import INPUTS

X = np.random.default_rng(0).normal(size=(60, 4))
Y = (X[:, 0] > 0).astype(int)


def rewrite(data: bytes, edit: Callable[[dict[str, Any]], None], members: dict[str, bytes] | None = None) -> bytes:
    """The archive with its schema edited in place and members added or replaced."""
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    edit(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            if name != "schema.json" and name not in (members or {}):
                target.writestr(name, source.read(name))
        for name, content in (members or {}).items():
            target.writestr(name, content)
        target.writestr("schema.json", json.dumps(schema))
    return out.getvalue()


def attrs(schema: dict[str, Any]) -> dict[str, Any]:
    """The attribute dict of the estimator at the root of a schema."""
    return schema["content"]["content"]


def add_attribute(schema: dict[str, Any], name: str, node: dict[str, Any]) -> None:
    """A new attribute on the root estimator, with the key type skops pairs with each key."""
    attrs(schema)[name] = node
    key_types = schema["content"]["key_types"]["content"]
    key_types.append(dict(key_types[0]))


def json_node(value: Any, node_id: int) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True, "__id__": node_id}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _tree_with_state(edit: Callable[[dict[str, Any]], None]) -> DecisionTreeClassifier:
    model = DecisionTreeClassifier(random_state=0).fit(X, Y)
    state = model.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    edit(state)
    model.tree_.__setstate__(state)
    return model


# -- crash the serving process at predict ---------------------------------------------------------

def tree_nodes_beyond_node_count() -> bytes:
    """node_count says 1 (a leaf) but the node array keeps wild children in the other nodes."""
    model = DecisionTreeClassifier(random_state=0).fit(X, Y)
    nodes = model.tree_.__getstate__()["nodes"].copy()
    nodes["left_child"][1:] = 10**9
    nodes["right_child"][1:] = 10**9

    def edit(schema: dict[str, Any]) -> None:
        tree_state = attrs(schema)["tree_"]["content"]["content"]
        tree_state["node_count"] = json_node(1, 990001)

    data = skops.io.dumps(model)
    name = _member_of(data, lambda s: attrs(s)["tree_"]["content"]["content"]["nodes"])
    return rewrite(data, edit, {name: _npy(nodes)})


def tree_without_n_features() -> bytes:
    """No n_features_in_ (so predict checks no width) and a split on feature 2**31-1."""
    def edit(state: dict[str, Any]) -> None:
        state["nodes"]["feature"][0] = 2**31 - 1
    model = _tree_with_state(edit)
    del model.n_features_in_
    return skops.io.dumps(model)


def tree_below_walk_depth() -> bytes:
    """A bad tree nested 80 lists deep, where a depth-limited walk never looks."""
    def edit(state: dict[str, Any]) -> None:
        state["nodes"]["left_child"][0] = 10**6
    bad = _tree_with_state(edit)
    holder: Any = bad
    for _ in range(80):
        holder = [holder]
    model = StandardScaler().fit(X)
    model.hidden_ = holder
    return skops.io.dumps(model)


def hist_gb_bitset_index() -> bytes:
    """A categorical split whose bitset index is far past the bitset array."""
    x = X.copy()
    x[:, 3] = np.arange(len(x)) % 3
    model = HistGradientBoostingClassifier(max_iter=2, categorical_features=[3], random_state=0).fit(x, Y)
    nodes = model._predictors[0][0].nodes
    inner = np.flatnonzero(nodes["is_leaf"] == 0)[0]
    nodes["is_categorical"][inner] = 1
    nodes["bitset_idx"][inner] = 2**31
    return skops.io.dumps(model)


def _svc() -> SVC:
    return SVC().fit(X, Y)


def svc_support_longer() -> bytes:
    model = _svc()
    model.support_ = np.concatenate([model.support_, np.arange(1000, dtype=np.int32)])
    return skops.io.dumps(model)


def svc_many_classes() -> bytes:
    model = _svc()
    model._n_support = np.ones(5000, dtype=np.int32)
    return skops.io.dumps(model)


def svc_empty_dual() -> bytes:
    model = _svc()
    model._dual_coef_ = np.empty((0, 0))
    return skops.io.dumps(model)


def sparse_generic_spmatrix() -> bytes:
    """A sparse coef_ declared as scipy's generic spmatrix type, indices out of range."""
    model = LogisticRegression().fit(X, Y)
    model.coef_ = sparse.csr_matrix((np.ones(1), np.array([10**7]), np.array([0, 1])), shape=(1, 4))

    def edit(schema: dict[str, Any]) -> None:
        attrs(schema)["coef_"].update({"__class__": "spmatrix", "__module__": "scipy.sparse._matrix"})

    return rewrite(skops.io.dumps(model), edit)


def sparse_bad_indices() -> bytes:
    """The same attack under the honest csr_matrix name: the full format check must catch it."""
    model = LogisticRegression().fit(X, Y)
    model.coef_ = sparse.csr_matrix((np.ones(1), np.array([10**7]), np.array([0, 1])), shape=(1, 4))
    return skops.io.dumps(model)


def knn_narrow_fit_x() -> bytes:
    model = KNeighborsClassifier(algorithm="brute").fit(X, Y)
    model._fit_X = np.ascontiguousarray(model._fit_X[:, :1])
    return skops.io.dumps(model)


def onehot_infrequent_mapping() -> bytes:
    """Infrequent-category grouping that maps categories past the feature's output columns."""
    codes = np.random.default_rng(0).integers(0, 6, (200, 4)).astype(float)
    model = OneHotEncoder(max_categories=3, sparse_output=False).fit(codes)
    model._default_to_infrequent_mappings[0][:] = 10**6
    return skops.io.dumps(model)


def encoder_categories_of_zero_size_items() -> bytes:
    """An encoder's categories as 10**12 strings of length 0: no bytes, so no size cap applies."""
    words = INPUTS["WORDS"]
    model = make_pipeline(OrdinalEncoder(), LogisticRegression()).fit(words, np.arange(len(words)) % 2)

    def categories(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if "categories_" in node:
                return node["categories_"]["content"][0]  # type: ignore[no-any-return]
            node = list(node.values())
        if isinstance(node, list):
            return next((found for child in node if (found := categories(child)) is not None), None)
        return None

    header = b"{'descr': '<U0', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    return rewrite(skops.io.dumps(model), lambda schema: categories(schema).update(file="zero-size.npy"), {"zero-size.npy": npy})  # type: ignore[union-attr]


# -- hang or exhaust ------------------------------------------------------------------------------

def audit_bomb(levels: int = 40) -> bytes:
    """Each level lists the previous one twice by id: skops' recursive type audit doubles per level."""
    def edit(schema: dict[str, Any]) -> None:
        base = 880000
        node: dict[str, Any] = json_node(0, base)
        for level in range(1, levels + 1):
            stub = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                    "content": [], "__id__": base + level - 1}
            first = node
            node = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                    "content": [first, stub], "__id__": base + level}
        add_attribute(schema, "bomb_", node)
    return rewrite(skops.io.dumps(StandardScaler().fit(X)), edit)


def member_referenced_many_times(copies: int = 300) -> bytes:
    """One 1 MiB member named by hundreds of distinct arrays (memory grows per reference)."""
    member = "big.npy"

    def edit(schema: dict[str, Any]) -> None:
        items = [{"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode",
                  "type": "numpy", "file": member, "__id__": 770000 + i} for i in range(copies)]
        add_attribute(schema, "copies_", {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                                          "content": items, "__id__": 769999})
    return rewrite(skops.io.dumps(StandardScaler().fit(X)), edit, {member: _npy(np.zeros(1 << 17))})


def nested_npz_bomb(megabytes: int = 64) -> bytes:
    """A sparse member whose inner npz deflates a small payload into a large declared array."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", compression=zipfile.ZIP_DEFLATED) as npz:
        # A well-formed matrix (every entry in column 0), so skops alone builds it: the harm shown
        # is the inflated size, not a format error after inflating.
        entries = megabytes << 17
        npz.writestr("data.npy", _npy(np.zeros(entries)))
        npz.writestr("indices.npy", _npy(np.zeros(entries, dtype=np.int32)))
        npz.writestr("indptr.npy", _npy(np.array([0, entries], dtype=np.int32)))
        npz.writestr("format.npy", _npy(np.array(b"csr")))
        npz.writestr("shape.npy", _npy(np.array([1, 4])))
    model = LogisticRegression().fit(X, Y)
    model.coef_ = sparse.csr_matrix(model.coef_)
    data = skops.io.dumps(model)
    name = _member_of(data, lambda s: attrs(s)["coef_"])
    return rewrite(data, lambda s: None, {name: inner.getvalue()})


def nested_pipelines(depth: int = 14) -> bytes:
    model: Any = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    for _ in range(depth - 1):
        model = Pipeline([("inner", model)])
    return skops.io.dumps(model)


def hashing_negative_ngrams() -> bytes:
    """Found by the fuzzer: a stateless vectorizer (never "fitted") with n-grams from -2**31."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return skops.io.dumps(HashingVectorizer(n_features=64, ngram_range=(-(2**31), -(2**31))))


def knn_huge_neighbors() -> bytes:
    model = KNeighborsClassifier(algorithm="brute").fit(X, Y)
    model.n_neighbors = 10**9
    return skops.io.dumps(model)


# -- read the server's files ----------------------------------------------------------------------

def vectorizer_reads_files() -> bytes:
    """CountVectorizer(input="filename"): each request string is opened as a path at predict."""
    texts = ["alpha beta", "beta gamma", "gamma alpha"] * 20
    model = make_pipeline(CountVectorizer(), LogisticRegression()).fit(texts, Y)
    # Fitted on content; at predict each request string is opened as a file name.
    model.steps[0][1].input = "filename"
    return skops.io.dumps(model)


def _member_of(data: bytes, pick: Callable[[dict[str, Any]], dict[str, Any]]) -> str:
    schema = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json"))
    return str(pick(schema)["file"])


# -- slip past the pre-scan ------------------------------------------------------------------------

def shared_id_zero_hides_a_short_tree_state() -> bytes:
    """Two nodes with `__id__` 0: skops shares only truthy ids, so it builds the second (a KDTree
    whose state tuple has one item, which its `__setstate__` indexes without bounds checks)."""
    data = skops.io.dumps(KNeighborsClassifier(algorithm="kd_tree").fit(X, Y))

    def edit(schema: dict[str, Any]) -> None:
        tree = attrs(schema)["_tree"]
        tree["__id__"] = 0
        short = dict(tree, content=dict(tree["content"], __id__=424242, content=tree["content"]["content"][:1]))
        add_attribute(schema, "zzz", short)
    return rewrite(data, edit)


def key_types_share_an_array_id() -> bytes:
    """skops builds a dict's key types before its values: a key-type node reusing `var_`'s id is
    the definition skops keeps, and it points at a member holding only an `.npy` header."""
    def edit(schema: dict[str, Any]) -> None:
        var = attrs(schema)["var_"]
        schema["content"]["key_types"]["content"][-1] = dict(var, file="evil.npy")
    header_only = _npy(np.zeros(4))[:-32]
    return rewrite(skops.io.dumps(StandardScaler().fit(X)), edit, {"evil.npy": header_only})


def tree_state_behind_a_shared_id() -> bytes:
    """A KDTree's 13-item state tuple carries the id of an empty tuple built earlier: skops
    passes the empty one to `__setstate__` (which indexes it without bounds checks)."""
    data = skops.io.dumps(KNeighborsClassifier(algorithm="kd_tree").fit(X, Y))

    def edit(schema: dict[str, Any]) -> None:
        holder = schema["content"]
        stub = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": [], "__id__": 4242}
        holder["content"]["_tree"]["content"]["__id__"] = 4242
        holder["content"] = {"aaa": stub, **holder["content"]}  # built before _tree
        key_types = holder["key_types"]["content"]
        key_types.append(dict(key_types[0]))
    return rewrite(data, edit)


def list_node_naming_ndarray() -> bytes:
    """`coef_` as a list node naming numpy.ndarray: skops calls `ndarray([4])`, an uninitialised
    array whose leftover heap bytes predict() hands back."""
    model = LinearRegression().fit(X, X @ [1.0, 2, 3, 4])

    def edit(schema: dict[str, Any]) -> None:
        attrs(schema)["coef_"] = {"__class__": "ndarray", "__module__": "numpy", "__loader__": "ListNode",
                                  "content": [json_node(4, 515151)], "__id__": 515152}
    return rewrite(skops.io.dumps(model), edit)


def _scaler_with_generator() -> StandardScaler:
    model = StandardScaler().fit(X)
    model.rng_ = np.random.default_rng(0)
    return model


def seed_sequence_pool_of_a_million() -> bytes:
    """A Generator whose seed sequence has pool size 10**6: numpy's set-up is quadratic in it."""
    model = _scaler_with_generator()

    def edit(schema: dict[str, Any]) -> None:
        seed_seq = attrs(schema)["rng_"]["content"]["seed_seq"]["content"]
        seed_seq["pool_size"] = json_node(10**6, 626262)  # its own id (honest dumps share small ints')
    return rewrite(skops.io.dumps(model), edit)


def fitted_hook_hides_a_model() -> bytes:
    """`__sklearn_is_fitted__ = bool` in a KNN's state: the model looks unfitted, so its validator
    would skip `n_neighbors` = 10**6."""
    model = KNeighborsClassifier().fit(X, Y)
    model.n_neighbors = 10**6
    model.__sklearn_is_fitted__ = bool
    return skops.io.dumps(model)


def _tree_replacing_its_check() -> DecisionTreeClassifier:
    def edit(state: dict[str, Any]) -> None:
        state["nodes"]["feature"][0] = 9_999_999
    model = _tree_with_state(edit)
    wide = Tree(10_000_000, model.tree_.n_classes, model.tree_.n_outputs)
    wide.__setstate__(model.tree_.__getstate__())
    model.tree_, model.n_features_in_ = wide, 10_000_000
    model._validate_X_predict = functools.partial(check_array, dtype=np.float32)
    return model


def method_replaced_by_state() -> bytes:
    """`_validate_X_predict` set to `partial(check_array)` in a tree's state: predict no longer
    checks a request's width, and a split on feature 9,999,999 (inside the n_features_in_ the
    model states, so every validator agrees) reads far past each row."""
    return skops.io.dumps(_tree_replacing_its_check())


def bit_generator_outside_the_allowlist() -> bytes:
    """A Generator over MT19937: skops builds the bit generator from a string in the state, so the
    type never appeared in the types the allowlist was asked about."""
    model = StandardScaler().fit(X)
    model.rng_ = np.random.Generator(np.random.MT19937(0))
    return skops.io.dumps(model)


def estimator_inside_a_partial() -> bytes:
    """A malformed LinearRegression as a keyword of the one accepted function, where the
    validators' walk did not look."""
    hidden = LinearRegression().fit(X, X[:, 0])
    hidden.coef_ = np.zeros(7)
    model = StandardScaler().fit(X)
    model.check_ = functools.partial(check_array, dtype=hidden)
    return skops.io.dumps(model)


def state_defined_before_its_object() -> bytes:
    """`method_replaced_by_state`'s tree inside a Pipeline, its attribute dict defined first under
    an earlier attribute and the tree's own state an empty dict of the same id: skops builds the
    tree from the first definition, the check read the empty one."""
    pipeline = Pipeline([("tree", _tree_replacing_its_check())])

    def edit(schema: dict[str, Any]) -> None:
        tree = attrs(schema)["steps"]["content"][0]["content"][1]
        state = tree["content"]
        tree["content"] = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": {},
                           "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                                         "content": [], "__id__": 515152}, "__id__": state["__id__"]}
        add_attribute(schema, "aaa_", state)
        names = attrs(schema)
        schema["content"]["content"] = {"aaa_": names.pop("aaa_"), **names}  # visited (and built) first
        key_types = schema["content"]["key_types"]["content"]
        key_types.insert(0, key_types.pop())
    return rewrite(skops.io.dumps(pipeline), edit)


def estimator_declared_as_a_loss() -> bytes:
    """`method_replaced_by_state`'s tree declared as a LossNode: skops builds the named class with
    the node's arguments and sets the state, which only the ObjectNode check looked at."""
    def edit(schema: dict[str, Any]) -> None:
        schema["__loader__"] = "LossNode"
        schema["__reduce__"] = {"args": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                                         "content": [], "__id__": 616161}}
    return rewrite(method_replaced_by_state(), edit)


def bit_generator_built_without_init() -> bytes:
    """An allowlisted PCG64 named by a plain ObjectNode with a tuple state: skops calls
    `PCG64.__new__` (its state pointer stays NULL) and `__setstate__` writes through it."""
    model = _scaler_with_generator()

    def edit(schema: dict[str, Any]) -> None:
        state = attrs(schema)["rng_"]["content"]["bit_generator"]
        attrs(schema)["rng_"] = {
            "__class__": "PCG64", "__module__": "numpy.random._pcg64", "__loader__": "ObjectNode", "__id__": 717171,
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "__id__": 717172,
                        "content": [state, json_node(None, 717173)]},
        }
    return rewrite(skops.io.dumps(model), edit)


def seed_sequence_in_surplus_key_types() -> bytes:
    """`seed_sequence_pool_of_a_million` with the large seed sequence defined first among surplus
    key types of the root dict (skops builds them all, pairs what it needs with the keys and drops
    the rest) and the Generator's own one a stub of the same id with pool size 4."""
    model = _scaler_with_generator()

    def edit(schema: dict[str, Any]) -> None:
        seed = attrs(schema)["rng_"]["content"]["seed_seq"]
        first = copy.deepcopy(seed)
        first["__id__"] = seed["__id__"] = 818181
        first["content"]["pool_size"] = json_node(10**6, 818182)
        schema["content"]["key_types"]["content"].append(first)
    return rewrite(skops.io.dumps(model), edit)


def boosting_started_from_one_column() -> bytes:
    """A 400-class GradientBoosting whose init_ Dummy says "uniform" over n_classes_ 1: its
    predict_proba gives one column, and predict_stages writes 400 per row into it."""
    labels = np.repeat(np.arange(400), 2)
    model = GradientBoostingClassifier(n_estimators=1, max_depth=1, random_state=0)
    model.fit(np.random.default_rng(0).normal(size=(800, 4)), labels)
    model.init_._strategy, model.init_.n_classes_ = "uniform", 1
    return skops.io.dumps(model)


def dummy_of_ten_million_classes() -> bytes:
    """A two-class Dummy stating n_classes_ 10**7: predict_proba fills 10**7 columns per row."""
    model = DummyClassifier(strategy="uniform").fit(X, Y)
    model.n_classes_ = 10**7
    return skops.io.dumps(model)


def backtracking_token_pattern() -> bytes:
    """A CountVectorizer whose token pattern backtracks for ever on each request's text."""
    model = CountVectorizer().fit(["alpha beta", "gamma delta"])
    model.token_pattern = ".*" * 100 + "Q"
    return skops.io.dumps(model)


# -- computed properties --------------------------------------------------------------------------

def _polynomial(**state: Any) -> bytes:
    """An honest degree-1 PolynomialFeatures over 2,000 features with stored state replaced."""
    model = preprocessing.PolynomialFeatures(degree=1).fit(np.zeros((2, 2000)))
    vars(model).update(state)
    return skops.io.dumps(model)


def polynomial_max_degree() -> bytes:
    """No code at all: `_max_degree` 10**6 behind an honest `degree` 1. `powers_` (a property, read
    by the landed validator) enumerates every combination up to it, 16 KB each."""
    return _polynomial(_max_degree=10**6)


def polynomial_expansion_width() -> bytes:
    """`_n_out_full` 10**10: transform allocates that many columns per request row."""
    return _polynomial(_n_out_full=10**10)


def tree_of_four_billion_outputs() -> bytes:
    """Found by the fuzzer: skops builds Tree(n_features, n_classes, n_outputs) from the schema
    before any check, and the constructor allocates n_outputs counters (2**32: 32 GiB)."""
    def edit(schema: dict[str, Any]) -> None:
        attrs(schema)["tree_"]["__reduce__"]["args"]["content"][2] = json_node(2**32, 909090)
    return rewrite(skops.io.dumps(DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, Y)), edit)


# -- meta-estimators, clustering, functions, search objects (issue 27) -----------------------------

Y3 = np.arange(len(X)) % 3


def voting_member_label_of_a_billion() -> bytes:
    """A hard-voting member (fit on the encoded labels 0..2) whose classes_ say 0, 1, 10**9: the
    vote counts each row's labels with bincount, 10**9 counters per row."""
    model = ensemble.VotingClassifier([("tree", DecisionTreeClassifier(max_depth=2, random_state=0)), ("lr", LogisticRegression())])
    model.fit(X, Y3)
    model.estimators_[0].classes_ = np.array([0, 1, 10**9])
    return skops.io.dumps(model)


def isolation_forest_member_wider() -> bytes:
    """An isolation tree built for 10,000,000 features (its own state consistent) in a forest of
    4. The forest applies its trees with check_input=False; the width check scikit-learn still
    makes there is all that keeps the split on feature 9,999,999 inside the request row."""
    model = ensemble.IsolationForest(n_estimators=2, random_state=0).fit(X)
    member = model.estimators_[0]
    state = member.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["feature"][0] = 9_999_999
    wide = Tree(10_000_000, member.tree_.n_classes, member.tree_.n_outputs)
    wide.__setstate__(state)
    member.tree_, member.n_features_in_ = wide, 10_000_000
    return skops.io.dumps(model)


def kmeans_narrow_centres() -> bytes:
    """Centres of 2 columns for 4 features: predict's Cython loop reads 4 values per centre."""
    model = cluster.KMeans(3, n_init=1, random_state=0).fit(X)
    model.cluster_centers_ = np.ascontiguousarray(model.cluster_centers_[:, :2])
    return skops.io.dumps(model)


def calibrators_fewer_than_classes() -> bytes:
    model = calibration.CalibratedClassifierCV(LogisticRegression(), cv=2).fit(X, Y3)
    model.calibrated_classifiers_[0].calibrators.pop()
    return skops.io.dumps(model)


def function_outside_the_list() -> bytes:
    """FunctionTransformer(numpy.fromfile): a request's value opened as a file name."""
    return skops.io.dumps(preprocessing.FunctionTransformer(np.fromfile).fit(X))


def function_writing_into_the_model() -> bytes:
    """log1p with `out=` an array of the model: every request writes its result into the model and
    returns that shared array (one caller's answer becomes another's)."""
    return skops.io.dumps(preprocessing.FunctionTransformer(np.log1p, kw_args={"out": np.zeros((60, 4))}).fit(X))


def masked_array_holding_an_estimator() -> bytes:
    """A search's cv_results_ column (a masked array of objects) holding a malformed fitted
    LinearRegression: masked data is walked like any other."""
    from sklearn.model_selection import GridSearchCV

    model = GridSearchCV(LinearRegression(), {"fit_intercept": [True, False]}, cv=2).fit(X, X[:, 0])
    hidden = LinearRegression().fit(X, X[:, 0])
    hidden.coef_ = np.zeros(7)
    column = model.cv_results_["param_fit_intercept"]
    model.cv_results_["param_fit_intercept"] = np.ma.MaskedArray(np.array([hidden, column[1]], dtype=object), [False, False])
    return skops.io.dumps(model)


def stacking_method_outside_the_list() -> bytes:
    """A stacking member called with `fit` at predict."""
    model = ensemble.StackingClassifier([("lr", LogisticRegression()), ("tree", DecisionTreeClassifier(max_depth=2))], cv=2).fit(X, Y3)
    model.stack_method_[0] = "fit"
    return skops.io.dumps(model)


def bagging_features_out_of_range() -> bytes:
    model = ensemble.BaggingClassifier(n_estimators=2, random_state=0).fit(X, Y)
    model.estimators_features_[0] = np.array([0, 1, 2, 10**6])
    return skops.io.dumps(model)


def adaboost_fewer_weights() -> bytes:
    model = ensemble.AdaBoostClassifier(n_estimators=5, random_state=0).fit(X, Y3)
    model.estimator_weights_ = model.estimator_weights_[:1]
    return skops.io.dumps(model)


def passthrough_column_out_of_range() -> bytes:
    from sklearn.compose import ColumnTransformer

    model = make_pipeline(ColumnTransformer([("s", StandardScaler(), [0])], remainder="passthrough"), LogisticRegression()).fit(X, Y)
    columns = model.steps[0][1]
    name, passthrough, _ = columns.transformers_[1]
    columns.transformers_[1] = (name, passthrough, [1, 2, 10**6])
    return skops.io.dumps(model)


def _patched_member(data: bytes, pick: Callable[[str], bool], offset_local: int, offset_central: int, value: bytes) -> bytes:
    """The archive with `value` written at the given offsets of the local and central headers of
    the first member `pick` accepts (flags, compression method)."""
    patched = bytearray(data)
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = next(i for i in archive.infolist() if pick(i.filename))
    local = info.header_offset + offset_local
    patched[local : local + len(value)] = value
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(info.filename)] != info.filename.encode():
        central = data.index(b"PK\x01\x02", central + 1)
    patched[central + offset_central : central + offset_central + len(value)] = value
    return bytes(patched)


def member_flagged_encrypted() -> bytes:
    """An array member whose headers say it is encrypted (zipfile raises RuntimeError)."""
    data = skops.io.dumps(StandardScaler().fit(X))
    return _patched_member(data, lambda n: n.endswith(".npy"), 6, 8, b"\x01\x00")


def member_of_unknown_compression() -> bytes:
    """An array member compressed with method 99 (zipfile raises NotImplementedError)."""
    data = skops.io.dumps(StandardScaler().fit(X))
    return _patched_member(data, lambda n: n.endswith(".npy"), 8, 10, b"\x63\x00")


# -- zip bomb: a real skops archive whose array member inflates to 1 GiB ---------------------------

ZIP_BOMB_BYTES = 1 << 30


@functools.cache
def zip_bomb() -> bytes:
    """A fitted StandardScaler's dump with its `scale_` member replaced by a deflated .npy of
    1 GiB of zeros (its header declares them): about 1 MiB on the wire, 1 GiB once skops reads it."""
    data = skops.io.dumps(StandardScaler().fit(X))
    name = _member_of(data, lambda s: attrs(s)["scale_"])
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename != name:
                target.writestr(info, source.read(info))
        bomb = zipfile.ZipInfo(name)
        bomb.compress_type = zipfile.ZIP_DEFLATED
        with target.open(bomb, "w", force_zip64=True) as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (ZIP_BOMB_BYTES // 8,)})
            member.write(header.getvalue())
            chunk = bytes(16 << 20)
            for _ in range(ZIP_BOMB_BYTES // len(chunk)):
                member.write(chunk)
    return out.getvalue()


_LIMITED_LOAD = """
import os, resource, sys, warnings
warnings.simplefilter("ignore")
import skops.io
data = open(sys.argv[1], "rb").read()
with open("/proc/self/statm") as statm:
    limit = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
except MemoryError:
    print("MemoryError")
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("loaded")
"""


def skops_alone_under_a_memory_limit(data: bytes, headroom: int = 512 << 20) -> str:
    """What a fresh process makes of `data` loaded with skops alone (trusting every type it names)
    under RLIMIT_AS of its size at start plus `headroom`: "MemoryError", "loaded" or the error."""
    with tempfile.NamedTemporaryFile(suffix=".skops") as sample:
        sample.write(data)
        sample.flush()
        done = subprocess.run([sys.executable, "-c", _LIMITED_LOAD, sample.name, str(headroom)], capture_output=True, text=True, timeout=600)
    return done.stdout.strip() or f"exit {done.returncode}: {done.stderr[-400:]}"


# -- positive controls: the harm shown on the model skops alone built ------------------------------
# Each runs in the fuzz worker's limited child (tests/fuzz_worker.py, --unchecked) with the model
# skops alone loaded, the archive and the request batch; it returns what it saw (the worker's
# outcome "shown") or fails an assertion ("unshown"). None depends on heap layout or timing: an
# out-of-range index is proven out of range from the arrays, a read file by its bytes.


def _show_tree_below_walk_depth(model: Any, data: bytes, x: Any) -> str:
    tree: Any = model.hidden_
    for _ in range(80):
        (tree,) = tree
    left, count = int(tree.tree_.children_left[0]), tree.tree_.node_count
    assert left >= count, (left, count)
    return f"80 lists down: a fitted tree whose node 0 has left child {left} of {count} nodes"


def _show_narrow_rows(name: str) -> Callable[[Any, bytes, Any], str]:
    def show(model: Any, data: bytes, x: Any) -> str:
        width = getattr(model, name).shape[1]
        assert width < model.n_features_in_ == x.shape[1], (width, model.n_features_in_)
        answer = model.predict(x)
        return f"{name} rows of {width} columns, predict answered {len(answer)} rows of {x.shape[1]} features (read past each row)"
    return show


def _show_uninitialised_coef(model: Any, data: bytes, x: Any) -> str:
    node = attrs(json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json")))["coef_"]
    assert node["__loader__"] == "ListNode" and "file" not in node, node  # the archive holds no values
    assert isinstance(model.coef_, np.ndarray) and model.coef_.shape == (4,), model.coef_
    answer = model.predict(x)
    assert np.allclose(answer, x @ model.coef_ + model.intercept_, equal_nan=True)
    return f"coef_ {model.coef_!r} built from no data in the archive, and predict answers with it"


def _show_fitted_hook(model: Any, data: bytes, x: Any) -> str:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    assert model.__sklearn_is_fitted__ is bool and model.n_neighbors == 10**6 and model._fit_X.shape[0] == len(X)
    try:
        check_is_fitted(model)
    except NotFittedError:
        return f"check_is_fitted calls it unfitted although it holds {len(X)} samples and n_neighbors {model.n_neighbors}"
    raise AssertionError("the hook did not hide the fitted model")


def _show_unlisted_bit_generator(model: Any, data: bytes, x: Any) -> str:
    built = type(model.rng_.bit_generator)
    name = f"{built.__module__}.{built.__name__}"
    listed = skops.io.get_untrusted_types(data=data)
    assert name == "numpy.random._mt19937.MT19937" and name not in listed, (name, listed)
    return f"built {name}; skops' type list named only {listed}"


def _hidden_coef(estimator: Any) -> str:
    assert isinstance(estimator, LinearRegression), estimator
    assert estimator.coef_.shape == (7,) and estimator.n_features_in_ == 4, estimator.coef_.shape
    return f"a fitted LinearRegression with coef_ of shape {estimator.coef_.shape} for n_features_in_ {estimator.n_features_in_}"


def _show_estimator_in_partial(model: Any, data: bytes, x: Any) -> str:
    return _hidden_coef(model.check_.keywords["dtype"]) + ", built as a partial's keyword"


def _show_estimator_in_masked_array(model: Any, data: bytes, x: Any) -> str:
    column = model.cv_results_["param_fit_intercept"]
    assert isinstance(column, np.ma.MaskedArray)
    return _hidden_coef(column.data[0]) + ", built inside cv_results_"


def _show_copies(model: Any, data: bytes, x: Any) -> str:
    buffers = {id(a.base if a.base is not None else a): a.nbytes for a in model.copies_}
    total = sum(buffers.values())
    assert len(buffers) == 300 and total >= 300 << 20, (len(buffers), total)
    return f"{len(buffers)} separate arrays, {total >> 20} MiB, from one member in an archive of {len(data) >> 20} MiB"


def _show_nested_npz(model: Any, data: bytes, x: Any) -> str:
    inflated = model.coef_.data.nbytes
    assert inflated >= 64 << 20 and inflated > 100 * len(data), (inflated, len(data))
    return f"coef_ holds {inflated >> 20} MiB inflated from an archive of {len(data) >> 10} KiB"


def _show_calibrator_missing(model: Any, data: bytes, x: Any) -> str:
    first = model.calibrated_classifiers_[0]
    assert len(first.calibrators) == 2 and len(model.classes_) == 3
    column = first.predict_proba(x)[:, 2]
    assert not column.any(), column
    return "class 2 never calibrated: the first fold gives it probability 0 for every row"


def _show_file_read(open_as: Callable[[str], Any], content: bytes, expect: Callable[[Any], bool], what: str) -> str:
    with tempfile.NamedTemporaryFile() as secret:
        secret.write(content)
        secret.flush()
        answer = open_as(secret.name)
    assert expect(answer), answer
    return f"{what}: {answer!r}"


def _show_fromfile(model: Any, data: bytes, x: Any) -> str:
    content = np.array([3.25, -7.5, 1e6]).tobytes()
    return _show_file_read(
        lambda path: model.transform(path), content, lambda answer: answer.tobytes() == content,
        f"a request naming a file with {len(content)} known bytes is answered with those bytes",
    )


def _show_vectorizer_reads(model: Any, data: bytes, x: Any) -> str:
    vectorizer = model.steps[0][1]
    counts = _show_file_read(
        lambda path: vectorizer.transform([path]).toarray()[0].tolist(), b"alpha alpha alpha beta gamma gamma",
        lambda answer: answer == [3, 1, 2], "a request naming a file holding 'alpha alpha alpha beta gamma gamma'",
    )
    assert sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get) == ["alpha", "beta", "gamma"]
    return counts + " is counted from the file's bytes (alpha, beta, gamma)"


def _show_shared_output(model: Any, data: bytes, x: Any) -> str:
    first, second = np.abs(X), np.abs(X) + 1
    one, two = model.transform(first), model.transform(second)
    assert one is two is model.kw_args["out"] and np.allclose(one, np.log1p(second))
    return "two requests got one array, the model's own kw_args['out'], holding the second request's answer"


def _show_dropped_members(model: Any, data: bytes, x: Any) -> str:
    assert len(model.estimators_) == 5 and len(model.estimator_weights_) == 1
    answer = model.predict_proba(x)
    model.estimators_ = model.estimators_[:1]
    assert np.array_equal(answer, model.predict_proba(x))
    return "predict_proba is the same with members 1..4 removed: 4 of 5 members never vote"


def _show_svc_reads_past(model: Any, data: bytes, x: Any) -> str:
    # libsvm's model takes its vector count l from support_ (sklearn/svm/src/libsvm/libsvm_helper.c
    # set_model) and its rows from support_vectors_ and _dual_coef_: predict walks l of each.
    count, rows, coefs = model.support_.shape[0], model.support_vectors_.shape[0], model._dual_coef_.shape[1]
    assert count > rows and count > coefs, (count, rows, coefs)
    return f"libsvm is told of {count} support vectors (support_) and given {rows} rows and {coefs} dual coefficients: predict reads {count - rows} past each"


def _show_boosting_writes_past(model: Any, data: bytes, x: Any) -> str:
    raw = model._raw_predict_init(np.asarray(x, dtype=np.float32))
    columns = model.estimators_.shape[1]
    assert raw.shape[1] < columns, (raw.shape, columns)
    return (f"predict_stages would write columns 0..{columns - 1} of each row into the init's raw predictions, "
            f"{raw.shape[1]} column wide (shape {raw.shape})")


def _show_walk_past_node_count(model: Any, data: bytes, x: Any) -> str:
    tree = model.tree_
    nodes = np.load(io.BytesIO(zipfile.ZipFile(io.BytesIO(data)).read(
        _member_of(data, lambda s: attrs(s)["tree_"]["content"]["content"]["nodes"]))))
    first = int(tree.children_left[0])
    assert tree.node_count == 1 and first >= tree.node_count, (tree.node_count, first)
    wild = int(nodes["left_child"][first])
    assert wild >= len(nodes), (wild, len(nodes))
    return (f"node 0 of a {tree.node_count}-node tree is a split to node {first}, whose child is node {wild} "
            f"of an array of {len(nodes)}: predict walks past both")


def _tree_width_unchecked(tree: Any, x: Any) -> str:
    feature = int(tree.tree_.feature.max())
    checked = tree._validate_X_predict(np.asarray(x, dtype=np.float32), True)
    assert checked.shape[1] == x.shape[1] <= feature, (checked.shape, feature)
    return f"predict accepts a request of {x.shape[1]} columns and splits on column {feature} of each row"


def _show_tree_without_width(model: Any, data: bytes, x: Any) -> str:
    assert not hasattr(model, "n_features_in_")
    return "no n_features_in_: " + _tree_width_unchecked(model, x)


def _show_check_replaced(model: Any, data: bytes, x: Any) -> str:
    tree = model.steps[0][1] if isinstance(model, Pipeline) else model
    assert isinstance(tree.__dict__.get("_validate_X_predict"), functools.partial), tree.__dict__.get("_validate_X_predict")
    return "_validate_X_predict replaced by the state's partial: " + _tree_width_unchecked(tree, x)


def _show_bitset_index_past(model: Any, data: bytes, x: Any) -> str:
    predictor = model._predictors[0][0]
    split = predictor.nodes[(predictor.nodes["is_leaf"] == 0) & (predictor.nodes["is_categorical"] == 1)]
    index, rows = int(split["bitset_idx"].max()), predictor.raw_left_cat_bitsets.shape[0]
    assert len(split) and index >= rows, (index, rows)
    return f"a categorical split reads bitset row {index} of {rows}"


def _show_svc_without_coefficients(model: Any, data: bytes, x: Any) -> str:
    count, coefs = model.support_.shape[0], model._dual_coef_.size
    assert count > coefs == 0, (count, coefs)
    return f"libsvm is told of {count} support vectors and given {coefs} dual coefficients: predict reads {count} past an empty buffer"


def _show_sparse_index_past(model: Any, data: bytes, x: Any) -> str:
    coef = model.coef_
    index, width = int(coef.indices.max()), coef.shape[1]
    assert index >= width == x.shape[1], (index, width)
    return f"coef_ is a sparse {coef.shape} matrix holding column index {index}: predict's product reads request column {index} of {width}"


def _show_infrequent_mapping_past(model: Any, data: bytes, x: Any) -> str:
    mapping, columns = model._default_to_infrequent_mappings[0], model._n_features_outs[0]
    assert int(mapping.max()) >= columns, (mapping, columns)
    return f"feature 0's categories map to output column {int(mapping.max())} of its {columns}: transform writes there"


class _StopBeforeSetstate(Exception):
    pass


def _show_short_tree_state(model: Any, data: bytes, x: Any) -> str:
    """Run instead of the load (`at_load`): skops alone loads the archive with KDTree's
    `__setstate__` watched, and the state it would be handed is shown shorter than the one it reads."""
    from sklearn.neighbors import KDTree, _kd_tree

    read = len(KDTree(np.zeros((2, 2))).__getstate__())  # __setstate__ takes state[0]..state[read-1], unchecked
    handed: list[int] = []

    class Watched(_kd_tree.KDTree):  # type: ignore[misc,valid-type]
        def __setstate__(self, state: Any) -> None:
            handed.append(len(state))
            if len(state) < read:
                raise _StopBeforeSetstate
            super().__setstate__(state)

    _kd_tree.KDTree = Watched  # skops finds the class by its module's attribute
    try:
        skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    except _StopBeforeSetstate:
        pass
    finally:
        _kd_tree.KDTree = KDTree
    short = [n for n in handed if n < read]
    assert short, handed
    return f"skops alone hands KDTree.__setstate__ (it reads {read} items with no bounds check) a state of {short[0]}"


@dataclass(frozen=True)
class Case:
    build: Callable[[], bytes]
    refusal: str  # regex the 422 message must match
    harm: str  # what the archive does when loaded by skops alone (tests/integration/test_fuzz.py)
    unchecked: str = ""  # the fuzz worker's outcome without these checks (a regex), where a test shows it
    input: str = "X"  # the request batch (tests/fuzz_cases.py INPUTS) sent to predict
    touch: str = ""  # an attribute read after an unchecked load (what a landed validator read)
    # The positive control, where the outcome alone does not show the harm: run on the model skops
    # alone built (tests/fuzz_worker.py); its evidence is the worker's detail (unchecked "shown").
    show: Callable[[Any, bytes, Any], str] | None = None
    evidence: str = ""  # a regex the unchecked outcome's detail must match
    at_load: bool = False  # the show control runs instead of the load (the harm is in skops' build)
    # Why there is no harm to show: skops or scikit-learn already stops the archive (the control
    # shows it stop); the refusal names the defect at load instead of a 500 at predict.
    harmless: str = ""


CASES: dict[str, Case] = {
    "tree_nodes_beyond_node_count": Case(tree_nodes_beyond_node_count, "node_count 1, capacity", "reads past the node array at predict", "shown", show=_show_walk_past_node_count),
    "tree_without_n_features": Case(tree_without_n_features, "n_features_in_ is missing", "reads past each request row at predict", "shown", show=_show_tree_without_width),
    "tree_below_walk_depth": Case(tree_below_walk_depth, "out-of-range left child", "a tree with an out-of-range child, hidden from a depth-limited walk", "shown", show=_show_tree_below_walk_depth),
    "hist_gb_bitset_index": Case(hist_gb_bitset_index, "names categorical bitset", "reads past the bitset array at predict", "shown", show=_show_bitset_index_past),
    "svc_support_longer": Case(svc_support_longer, "support_ has shape", "out-of-bounds reads at predict (a SIGSEGV where they leave the heap)", "shown", show=_show_svc_reads_past),
    "svc_many_classes": Case(svc_many_classes, "_n_support .* disagrees", "libsvm class counts that disagree with the model", "predict-error", evidence="internal representation of SVC was altered", harmless="scikit-learn compares libsvm's state with the model at predict and raises"),
    "svc_empty_dual": Case(svc_empty_dual, "_dual_coef_ has", "reads past an empty coefficient buffer at predict", "shown", show=_show_svc_without_coefficients),
    "sparse_generic_spmatrix": Case(sparse_generic_spmatrix, r"outside the allowlist: \['scipy.sparse._matrix.spmatrix'\]", "reads past each request row at predict", "shown", show=_show_sparse_index_past),
    "sparse_bad_indices": Case(sparse_bad_indices, "malformed sparse matrix", "reads past each request row at predict", "shown", show=_show_sparse_index_past),
    "knn_narrow_fit_x": Case(knn_narrow_fit_x, "_fit_X has shape", "samples narrower than the features predict reads", "shown", show=_show_narrow_rows("_fit_X")),
    "encoder_categories_of_zero_size_items": Case(encoder_categories_of_zero_size_items, "zero-size dtype '<U0'", "predict spins over 10**12 empty strings", "timeout", "WORDS"),
    "onehot_infrequent_mapping": Case(onehot_infrequent_mapping, "maps categories outside its 3 output columns", "writes past the output at transform", "shown", "XC", show=_show_infrequent_mapping_past),
    "audit_bomb": Case(audit_bomb, "shared-reference|expands to more than", "type audit never returns", "timeout"),
    "shared_id_zero_hides_a_short_tree_state": Case(shared_id_zero_hides_a_short_tree_state, "node id 0 that is not a positive integer", "reads past a 1-item state while skops builds the tree", "shown", show=_show_short_tree_state, at_load=True),
    "key_types_share_an_array_id": Case(key_types_share_an_array_id, "declares 32 bytes of data but its member holds 0", "an array read from the bytes after its member", "load-error", evidence="expected 32 bytes got 0", harmless="skops alone reads members through zipfile, which stops at the member's end; the harm is the runtime's own in-place reader reading on into the next member, which this check closes"),
    "tree_state_behind_a_shared_id": Case(tree_state_behind_a_shared_id, "KDTree is a shared reference", "reads past an empty state while skops builds the tree", "shown", show=_show_short_tree_state, at_load=True),
    "list_node_naming_ndarray": Case(list_node_naming_ndarray, "ListNode in its schema names the type numpy.ndarray", "leftover heap bytes returned by predict", "shown", show=_show_uninitialised_coef),
    "seed_sequence_pool_of_a_million": Case(seed_sequence_pool_of_a_million, "pool size 1000000", "half an hour of CPU at load", "timeout"),
    "fitted_hook_hides_a_model": Case(fitted_hook_hides_a_model, r"special attributes \['__sklearn_is_fitted__'\]", "a fitted KNN with n_neighbors 10**6 that check_is_fitted calls unfitted", "shown", show=_show_fitted_hook),
    "method_replaced_by_state": Case(method_replaced_by_state, r"replace its class's methods or properties \['_validate_X_predict'\]", "reads past each request row at predict", "shown", show=_show_check_replaced),
    "bit_generator_outside_the_allowlist": Case(bit_generator_outside_the_allowlist, r"outside the allowlist: \['numpy.random._mt19937.MT19937'\]", "a type the allowlist never saw, built at load", "shown", show=_show_unlisted_bit_generator),
    "estimator_inside_a_partial": Case(estimator_inside_a_partial, r"coef_ has shape \(7,\)", "an estimator no validator looked at", "shown", show=_show_estimator_in_partial),
    "state_defined_before_its_object": Case(state_defined_before_its_object, r"replace its class's methods or properties \['_validate_X_predict'\]", "reads past each request row at predict", "shown", show=_show_check_replaced),
    "estimator_declared_as_a_loss": Case(estimator_declared_as_a_loss, "a LossNode in its schema names the type sklearn.tree", "reads past each request row at predict", "shown", show=_show_check_replaced),
    "bit_generator_built_without_init": Case(bit_generator_built_without_init, "ObjectNode in its schema builds numpy.random._pcg64.PCG64", "SIGSEGV while skops builds it", "signal"),
    "seed_sequence_in_surplus_key_types": Case(seed_sequence_in_surplus_key_types, "key types that do not match its keys one for one", "minutes of CPU at load", "timeout"),
    "boosting_started_from_one_column": Case(boosting_started_from_one_column, "n_classes_ 1 is not the 400 classes", "an out-of-bounds write at predict", "shown", show=_show_boosting_writes_past),
    "dummy_of_ten_million_classes": Case(dummy_of_ten_million_classes, "n_classes_ 10000000 is not the 2 classes", "gigabytes per request", "memory"),
    "backtracking_token_pattern": Case(backtracking_token_pattern, "token_pattern .* is not one of", "transform never returns", "timeout", "TEXTS"),
    "member_flagged_encrypted": Case(member_flagged_encrypted, "damaged: RuntimeError: .* is encrypted", "an exception that is not a refusal", "load-error", evidence="RuntimeError: .* is encrypted", harmless="a format refusal: zipfile raises before any byte is used; the check makes a 500 a 422 that names the damage"),
    "member_of_unknown_compression": Case(member_of_unknown_compression, "damaged: NotImplementedError: That compression method", "an exception that is not a refusal", "load-error", evidence="NotImplementedError: That compression method", harmless="a format refusal: zipfile raises before any byte is used; the check makes a 500 a 422 that names the damage"),
    "member_referenced_many_times": Case(member_referenced_many_times, "referenced by more than one array", "memory grows per reference", "shown", show=_show_copies),
    "nested_npz_bomb": Case(nested_npz_bomb, "zip bomb", "gigabytes inflated before any check", "shown", show=_show_nested_npz),
    "nested_pipelines": Case(nested_pipelines, "composites nest deeper than", "minutes of CPU", "timeout"),
    "hashing_negative_ngrams": Case(hashing_negative_ngrams, r"ngram_range \(-2147483648, -2147483648\) is outside", "billions of n-gram loops per document", "timeout", "TEXTS"),
    "knn_huge_neighbors": Case(knn_huge_neighbors, r"n_neighbors = 1000000000 is outside", "neighbour searches far beyond the fitted samples", "predict-error", evidence="Expected n_neighbors <= n_samples_fit", harmless="scikit-learn compares n_neighbors with the fitted samples at predict and raises"),
    "polynomial_max_degree": Case(polynomial_max_degree, r"_max_degree 1000000 disagree with degree 1", "memory without bound while powers_ is read (in the landed load_model)", "memory", "WIDE", "powers_"),
    "polynomial_expansion_width": Case(polynomial_expansion_width, r"_n_out_full = 10000000000 is outside", "a 10**10-column array per request", "memory", "WIDE"),
    "tree_of_four_billion_outputs": Case(tree_of_four_billion_outputs, r"a tree's n_outputs 4294967296 is outside", "32 GiB asked for while skops builds the tree", "memory"),
    "voting_member_label_of_a_billion": Case(voting_member_label_of_a_billion, r"classes_ are not the 3 encoded classes", "10**9 vote counters per row", "memory"),
    "isolation_forest_member_wider": Case(isolation_forest_member_wider, "a member takes 10000000 features; it is given 4", "a member that cannot take the request (scikit-learn's own width check stops it)", "predict-error", evidence="expecting 10000000 features", harmless="scikit-learn's own width check stops the member at predict"),
    "kmeans_narrow_centres": Case(kmeans_narrow_centres, r"cluster_centers_ has shape \(3, 2\)", "reads past each centre at predict", "shown", show=_show_narrow_rows("cluster_centers_")),
    "calibrators_fewer_than_classes": Case(calibrators_fewer_than_classes, "2 calibrators for 3 predicted columns", "a class never calibrated", "shown", show=_show_calibrator_missing),
    "function_outside_the_list": Case(function_outside_the_list, r"calls the functions \['numpy.fromfile'\].*trusted_types cannot add functions", "a request value opened as a file", "shown", show=_show_fromfile),
    "function_writing_into_the_model": Case(function_writing_into_the_model, r"kw_args|keyword arguments \{'out'", "results written into the model, shared between requests", "shown", show=_show_shared_output),
    "masked_array_holding_an_estimator": Case(masked_array_holding_an_estimator, r"coef_ has shape \(7,\)", "an estimator no validator looked at", "shown", show=_show_estimator_in_masked_array),
    "stacking_method_outside_the_list": Case(stacking_method_outside_the_list, "stack method 'fit' is not one of", "a member refitted at predict", "predict-error", evidence=r"TypeError: LogisticRegression\.fit\(\) missing"),
    "bagging_features_out_of_range": Case(bagging_features_out_of_range, r"estimators_features_\[0\] has shape|estimators_features_\[0\] holds an index outside", "a column outside the request", "predict-error", evidence="index 1000000 is out of bounds for axis 1 with size 4", harmless="numpy's fancy indexing is bounds-checked: predict raises IndexError"),
    "adaboost_fewer_weights": Case(adaboost_fewer_weights, "estimator_weights_ has 1 finite weights for 5 members", "members silently dropped from the vote", "shown", show=_show_dropped_members),
    "passthrough_column_out_of_range": Case(passthrough_column_out_of_range, "transformer columns holds an index outside", "a column outside the request", "predict-error", evidence="index 1000000 is out of bounds for axis 1 with size 4", harmless="numpy's fancy indexing is bounds-checked: predict raises IndexError"),
    "vectorizer_reads_files": Case(vectorizer_reads_files, "input = 'filename' is not one of", "reads server files at predict", "shown", "PATHS", show=_show_vectorizer_reads),
}
