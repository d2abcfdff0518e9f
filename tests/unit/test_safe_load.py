"""The serving side treats skops bytes as hostile: caps, zip checks, allowlist, tree checks."""

import io
import os
import re
import zipfile
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from runtime.errors import ModelRefused
from runtime.safe_load import load_model
from tests.crafted import skops_alone_under_a_memory_limit, zip_bomb

X = np.random.default_rng(0).normal(size=(60, 4))
Y = (X[:, 0] > 0).astype(int)


def test_an_ordinary_model_round_trips_and_predicts_the_same() -> None:
    model = SVC().fit(X, Y)
    loaded = load_model(skops.io.dumps(model), [])
    assert (loaded.predict(X) == model.predict(X)).all()


def test_forests_and_boosted_trees_load_after_validation() -> None:
    for model in (RandomForestClassifier(n_estimators=3).fit(X, Y), HistGradientBoostingClassifier(max_iter=3).fit(X, Y)):
        loaded = load_model(skops.io.dumps(model), [])
        assert (loaded.predict(X) == model.predict(X)).all()


def test_types_outside_the_allowlist_are_refused_by_name() -> None:
    data = skops.io.dumps(FunctionTransformer(func=os.system))
    with pytest.raises(ModelRefused, match="posix.system") as exc:
        load_model(data, [])
    assert exc.value.status_code == 422


def test_not_a_zip_is_refused() -> None:
    with pytest.raises(ModelRefused, match="not a skops archive"):
        load_model(b"\x80\x04not a zip", [])


def test_a_zip_bomb_is_refused_before_skops_reads_it() -> None:
    """A real skops archive (a fitted StandardScaler) whose scale_ member deflates to 1 GiB."""
    bomb = zip_bomb()
    # Positive control: skops alone, in a process with 512 MiB above its start, runs out of
    # memory on it, and loads the honest dump of the same scaler under the same limit.
    assert skops_alone_under_a_memory_limit(skops.io.dumps(StandardScaler().fit(X))) == "loaded"
    assert skops_alone_under_a_memory_limit(bomb) == "MemoryError"
    with pytest.raises(ModelRefused, match=r"expands \d+x: refused as a zip bomb"):
        load_model(bomb, [])


def _tampered_tree(field: str, value: int) -> bytes:
    model = DecisionTreeClassifier(random_state=0).fit(X, Y)
    state = model.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes[field][0] = value
    state["nodes"] = nodes
    model.tree_.__setstate__(state)
    return skops.io.dumps(model)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("left_child", 10**6, "out-of-range left child"),
        ("right_child", 0, "out-of-range right child"),
        ("feature", 99, "feature outside"),
    ],
)
def test_a_crafted_decision_tree_is_refused(field: str, value: int, message: str) -> None:
    with pytest.raises(ModelRefused, match=message):
        load_model(_tampered_tree(field, value), [])


def test_a_crafted_boosted_tree_is_refused() -> None:
    model = HistGradientBoostingClassifier(max_iter=2).fit(X, Y)
    model._predictors[0][0].nodes["left"][0] = 5000
    with pytest.raises(ModelRefused, match="TreePredictor: node 0 has an out-of-range left child"):
        load_model(skops.io.dumps(model), [])


def test_a_non_estimator_is_refused() -> None:
    with pytest.raises(ModelRefused, match="not a scikit-learn estimator"):
        load_model(skops.io.dumps({"a": 1}), [])


def test_every_allowlisted_family_round_trips_without_a_false_refusal() -> None:
    from tests.fuzz_cases import INPUTS, honest_models

    for honest in honest_models():
        original = skops.io.loads(honest.data, trusted=skops.io.get_untrusted_types(data=honest.data))
        loaded = load_model(honest.data, [])
        x = INPUTS[honest.input]
        method = "predict" if hasattr(original, "predict") else "transform"
        want, got = getattr(original, method)(x), getattr(loaded, method)(x)
        want, got = (a.toarray() if hasattr(a, "toarray") else a for a in (want, got))
        assert np.array_equal(np.asarray(want), np.asarray(got)), honest.name


def test_the_walkthrough_and_benchmark_models_load(digits_svm_bytes: bytes) -> None:
    import joblib

    from tests.model_corpus import large_estimator

    digits = joblib.load(io.BytesIO(digits_svm_bytes))
    assert type(load_model(skops.io.dumps(digits), [])).__name__ == "SVC"
    knn = large_estimator(1)
    loaded = load_model(skops.io.dumps(knn), [])
    assert (loaded.predict(knn._fit_X[:5]) == knn.predict(knn._fit_X[:5])).all()


def test_a_type_outside_the_allowlist_loads_only_when_trusted_and_is_named_in_the_refusal() -> None:
    from sklearn.neighbors import NearestCentroid

    data = skops.io.dumps(NearestCentroid().fit(X, Y))
    with pytest.raises(ModelRefused, match=r"sklearn.neighbors._nearest_centroid.NearestCentroid.*trusted_types"):
        load_model(data, [])
    loaded = load_model(data, ["sklearn.neighbors._nearest_centroid.NearestCentroid"])
    assert loaded.predict(X).shape == (len(X),)


def test_buffers_other_than_bytes_are_read_in_place() -> None:
    import mmap

    data = skops.io.dumps(SVC().fit(X, Y))
    for buffer in (bytearray(data), memoryview(data)):
        assert load_model(buffer, []).predict(X).shape == (len(X),)
    with mmap.mmap(-1, len(data)) as mapped:
        mapped.write(data)
        assert load_model(mapped, []).predict(X).shape == (len(X),)


def test_arrays_read_in_place_equal_the_arrays_skops_reads() -> None:
    """Arrays are read with the pre-scan's header parse (from the model file, or from a member
    copied out of bytes); they must equal what skops' own `np.load` makes of the same archive."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tests.support import memfd_file

    model = LogisticRegression().fit(X, Y)
    # Other dtypes, byte orders and layouts than a fit produces: read in place, they must match.
    model.coef_ = np.asfortranarray(np.arange(8, dtype=">f8").reshape(2, 4)[:1])
    model.classes_ = np.array([3, 7], dtype=np.int16)
    labelled = LogisticRegression().fit(X, np.where(Y, "yes", "no"))  # classes_ of dtype <U3
    scaler = StandardScaler().fit(X.astype(np.float32))
    for fitted in (model, labelled, scaler, SVC().fit(X, Y)):
        data = skops.io.dumps(fitted)
        expected = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
        with memfd_file(data) as file:
            from_file = load_model(file, [])
        for loaded in (from_file, load_model(data, [])):
            for name, value in vars(expected).items():
                if isinstance(value, np.ndarray):
                    kept = getattr(loaded, name)
                    assert kept.dtype == value.dtype and kept.shape == value.shape, name
                    assert np.array_equal(kept, value), name
                    assert kept.flags.f_contiguous == value.flags.f_contiguous, name
                    assert kept.flags.c_contiguous == value.flags.c_contiguous, name
                    assert kept.flags.writeable, name


@pytest.mark.parametrize(
    "array",
    [
        np.array(60),
        np.empty((0, 4), dtype=np.float32),
        np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)),
        np.arange(6, dtype=">i4").reshape(3, 2),
        np.array(["no", "yes"]),
        np.zeros(3, dtype=[("a", "<f8"), ("b", "<i2")]),
        np.ones((2, 2), dtype=np.complex64),
        np.arange((64 << 20) // 8 + 3, dtype=np.float64).reshape(-1, 1),  # read in 4 KiB pages
    ],
    ids=["0-d", "empty", "fortran-3d", "big-endian", "unicode", "structured", "complex", "64MiB"],
)
def test_the_array_reader_reads_what_np_load_reads(array: np.ndarray) -> None:
    from runtime._internal.skops_reader import _read_array
    from tests.support import memfd_file

    stored = io.BytesIO()
    np.save(stored, array, allow_pickle=False)
    expected = np.load(io.BytesIO(stored.getvalue()), allow_pickle=False)
    with memfd_file(stored.getvalue()) as file:
        from_file = _read_array(file)
    for read in (from_file, _read_array(io.BytesIO(stored.getvalue()))):
        assert read.dtype == expected.dtype and read.shape == expected.shape and np.array_equal(read, expected)
        assert read.flags.f_contiguous == expected.flags.f_contiguous and read.flags.writeable


def test_the_array_reader_refuses_a_short_member() -> None:
    from runtime._internal.skops_reader import _read_array
    from tests.support import memfd_file

    stored = io.BytesIO()
    np.save(stored, np.arange(100.0), allow_pickle=False)
    short = stored.getvalue()[:-8]
    with memfd_file(short) as file, pytest.raises(ValueError, match="99 of its 100 items"):
        _read_array(file)
    with pytest.raises(ValueError, match="792 of its 800 bytes"):
        _read_array(io.BytesIO(short))


def test_an_archive_of_another_skops_protocol_is_refused_naming_both() -> None:
    import json

    from skops.io._protocol import PROTOCOL

    from tests.support import memfd_file

    data = skops.io.dumps(SVC().fit(X, Y))
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    schema["protocol"] = PROTOCOL - 1
    rewritten = io.BytesIO()
    with zipfile.ZipFile(rewritten, "w") as target:
        for name in source.namelist():
            target.writestr(name, json.dumps(schema) if name == "schema.json" else source.read(name))
    with memfd_file(rewritten.getvalue()) as file, pytest.raises(ModelRefused, match=f"skops protocol {PROTOCOL - 1}") as refused:
        load_model(file, [])
    assert refused.value.status_code == 422


def test_a_member_whose_local_header_names_another_file_is_refused() -> None:
    from tests.support import memfd_file

    data = bytearray(skops.io.dumps(SVC().fit(X, Y)))
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    member = next(info for info in archive.infolist() if info.filename.endswith(".npy"))
    # Rename the member in its local header only (same length), not in the central directory.
    start = member.header_offset + 30
    name = member.filename.encode()
    assert data[start : start + len(name)] == name
    data[start : start + len(name)] = b"x" * len(name)
    for source in ("bytes", "file"):
        with pytest.raises(ModelRefused) as refused:
            if source == "bytes":
                load_model(bytes(data), [])
            else:
                with memfd_file(bytes(data)) as file:
                    load_model(file, [])
        assert refused.value.status_code == 422 and "header" in str(refused.value), source


class NativeHandleModel(BaseEstimator):
    """Stands for a third-party booster (LightGBM's Booster): its own `__setstate__` builds a
    native handle, a type the archive never names."""

    def fit(self, x: Any, y: Any = None) -> "NativeHandleModel":
        self.weights_ = np.ones(x.shape[1])
        return self

    def predict(self, x: Any) -> Any:
        return np.asarray(x) @ self.weights_

    def __setstate__(self, state: dict[str, Any]) -> None:
        import ctypes

        self.__dict__.update(state)
        self.handle_ = ctypes.c_void_p(None)


def test_one_round_of_trusted_types_is_enough_for_what_trusted_code_builds() -> None:
    """Issue 27: LightGBM needed two rounds, `ctypes.c_void_p` named only after the first. What
    a trusted type's own code builds on load belongs to it."""
    data = skops.io.dumps(NativeHandleModel().fit(X))
    name = f"{__name__}.NativeHandleModel"
    with pytest.raises(ModelRefused) as refused:
        load_model(data, [])
    named = re.findall(r"'([\w.]+)'", str(refused.value))
    assert named == [name]
    loaded = load_model(data, named)
    assert np.array_equal(loaded.predict(X), X @ np.ones(X.shape[1]))


def test_trusting_a_function_does_not_load_it_and_the_refusal_says_so() -> None:
    """A function outside NumPy's element-wise list (named where skops expects a type) is not
    something trusted_types can add: the refusal says so instead of inviting a second round."""
    data = skops.io.dumps(FunctionTransformer(np.fromfile).fit(X))
    for trusted in ([], ["numpy.fromfile"]):
        with pytest.raises(ModelRefused, match=r"functions \['numpy.fromfile'\].*trusted_types cannot add functions"):
            load_model(data, trusted)
