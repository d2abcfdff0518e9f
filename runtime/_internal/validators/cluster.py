"""KMeans and MiniBatchKMeans: the centres compiled code reads per request are exactly
n_clusters x n_features_in_ floating-point values, and its thread count is bounded."""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime._internal.validators.common import MAX_CLASSES, array, fail, in_range, integer, n_features, state

TYPES = (
    "sklearn.cluster._kmeans.KMeans",
    "sklearn.cluster._kmeans.MiniBatchKMeans",
)
MAX_THREADS = 1024


def validate(est: Any) -> None:
    features = n_features(est)
    k = integer(est, "n_clusters", 1, MAX_CLASSES)
    # predict's Cython loop reads n_features_in_ values of each of the centres' rows.
    centers = array(est, "cluster_centers_", shape=(k, features), kinds="f")
    if centers.dtype not in (np.float64, np.float32) or not centers.flags.c_contiguous:
        raise fail(est, "cluster_centers_ must be C-contiguous float64 or float32")
    integer(est, "_n_features_out", k, k)
    integer(est, "_n_threads", 1, MAX_THREADS)
    labels = state(est, "labels_")
    if labels is not None:
        in_range(est, "labels_", array(est, "labels_", ndim=1, kinds="iu"), 0, k)
