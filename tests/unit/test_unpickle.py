"""The child's unpickler: joblib arrays mapped from the artefact, everything else as joblib reads it."""

from __future__ import annotations

import io
import mmap
import os
import pickle

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsClassifier

from loader._internal.unpickle import load_artefact


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("artefact")
    os.write(fd, data)
    return fd


def _joblib_bytes(obj: object, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer, **kwargs)
    return buffer.getvalue()


def _mapping_under(array: np.ndarray) -> object:
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


@pytest.fixture
def knn() -> KNeighborsClassifier:
    rng = np.random.default_rng(1)
    return KNeighborsClassifier(n_neighbors=3).fit(rng.random((500, 8)), rng.integers(0, 3, 500))


def test_joblib_arrays_are_views_of_one_private_mapping_and_predict_alike(knn: KNeighborsClassifier) -> None:
    loaded = load_artefact(_memfd(_joblib_bytes(knn)))
    assert isinstance(_mapping_under(loaded._fit_X), mmap.mmap)
    assert type(loaded._fit_X) is np.ndarray  # not np.memmap: the skops form names ndarray
    assert loaded._fit_X.flags.writeable and loaded._fit_X.ctypes.data % 16 == 0
    np.testing.assert_array_equal(loaded._fit_X, knn._fit_X)
    probe = np.random.default_rng(2).random((20, 8))
    np.testing.assert_array_equal(loaded.predict(probe), knn.predict(probe))


def test_the_artefact_keeps_its_bytes_when_a_mapped_array_is_written(knn: KNeighborsClassifier) -> None:
    data = _joblib_bytes(knn)
    fd = _memfd(data)
    keep = os.dup(fd)
    loaded = load_artefact(fd)
    loaded._fit_X[:] = 0.0
    assert os.pread(keep, len(data) + 1, 0) == data
    os.close(keep)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=">f8").reshape(3, 4),  # byte-swapped: made native, as joblib.load does
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.array([{"a": 1}, None], dtype=object),
        np.arange(5, dtype=np.int32)[::2],
        np.zeros((0, 3)),
    ],
    ids=["big-endian", "fortran", "object", "strided", "empty"],
)
def test_arrays_of_every_kind_come_back_equal_to_joblib_load(array: np.ndarray) -> None:
    data = _joblib_bytes({"x": array, "after": "tail"})
    expected = joblib.load(io.BytesIO(data))
    loaded = load_artefact(_memfd(data))
    assert loaded["after"] == "tail"
    assert loaded["x"].dtype == expected["x"].dtype and loaded["x"].dtype.isnative == expected["x"].dtype.isnative
    if array.dtype.hasobject:
        assert list(loaded["x"]) == list(expected["x"])
    else:
        np.testing.assert_array_equal(loaded["x"], expected["x"])
        assert loaded["x"].flags.f_contiguous == expected["x"].flags.f_contiguous


@pytest.mark.parametrize("how", ["compressed joblib", "plain pickle"])
def test_files_joblib_cannot_map_are_read_as_joblib_reads_them(how: str) -> None:
    model = LinearRegression().fit(np.arange(20.0).reshape(10, 2), np.arange(10.0))
    data = _joblib_bytes(model, compress=3) if how == "compressed joblib" else pickle.dumps(model)
    loaded = load_artefact(_memfd(data))
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    assert not isinstance(_mapping_under(loaded.coef_), mmap.mmap)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_a_truncated_joblib_file_raises_instead_of_mapping_past_its_end(knn: KNeighborsClassifier, cut: float) -> None:
    data = _joblib_bytes(knn)
    with pytest.raises((TypeError, EOFError, pickle.UnpicklingError, ValueError)):
        load_artefact(_memfd(data[: int(len(data) * cut)]))


def test_an_empty_file_raises() -> None:
    with pytest.raises(EOFError):
        load_artefact(_memfd(b""))


def test_the_childs_warm_up_sample_unpickles_and_converts_under_confinement() -> None:
    """The warm-up swallows its errors (it only buys speed): this shows it does not need them."""
    from loader._internal import child, skops_writer, unpickle
    from loader._internal.confine import ChildLimits, confine

    child.prepare_warm_up()
    sample = child._warm_up_sample
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child reports through the pipe
        os.close(read_end)
        try:
            confine(ChildLimits())
            models = unpickle.load_mapped(io.BytesIO(sample), bytearray(sample))
            skops_writer.dump(models, io.BytesIO())
            report = "ok " + " ".join(type(model).__name__ for model in models)
        except BaseException as exc:  # noqa: BLE001
            report = f"failed: {type(exc).__name__}: {exc}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode()
    os.waitpid(pid, 0)
    assert report == "ok Pipeline SVC RandomForestClassifier KNeighborsClassifier", report
