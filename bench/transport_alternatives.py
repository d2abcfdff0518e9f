"""Measure the converted-model transport against an alternative, in one run (docs/decisions/transport.md).

    .venv/bin/python bench/transport_alternatives.py [--mb 64]

For a k-NN of `--mb` MB (random float64) and the digits SVC, prints milliseconds for:
- joblib.load of the artefact (the plain baseline) and hashlib.sha256 of its bytes;
- skops.io.dump / skops.io.load (the transport today, ZIP_STORED);
- pickle protocol 5 with out-of-band buffers: dump in the child, then a load through an
  unpickler that resolves only allowlisted globals, with the arrays' bytes read in place from
  the (mapped) result. This is a measurement aid, not used by the product.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from digits_walkthrough.build import train_digits_svm  # noqa: E402

from tests.model_corpus import large_estimator  # noqa: E402

# What the two models need; a real allowlist would be per model family (see runtime/_internal).
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("sklearn.neighbors._classification", "KNeighborsClassifier"), ("sklearn.svm._classes", "SVC"),
    ("builtins", "slice"),
}


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def measure(model: Any, repeat: int) -> dict[str, float]:
    import skops.io

    artefact = io.BytesIO()
    joblib.dump(model, artefact)
    raw = artefact.getvalue()
    out = {"artefact_mb": len(raw) / 2**20}
    out["joblib_load_ms"] = _median_ms(lambda: joblib.load(io.BytesIO(raw)), repeat)
    out["sha256_ms"] = _median_ms(lambda: hashlib.sha256(raw).hexdigest(), repeat)

    skops_bytes = skops.io.dumps(model)
    types = skops.io.get_untrusted_types(data=skops_bytes)
    out["skops_dump_ms"] = _median_ms(lambda: skops.io.dumps(model), repeat)
    out["skops_load_ms"] = _median_ms(lambda: skops.io.loads(skops_bytes, trusted=types), repeat)

    def dump5() -> tuple[bytes, list[pickle.PickleBuffer]]:
        buffers: list[pickle.PickleBuffer] = []
        return pickle.dumps(model, protocol=5, buffer_callback=buffers.append), buffers

    stream, buffers = dump5()
    # As the server would see them: one read-only region holding every out-of-band buffer.
    region = memoryview(b"".join(bytes(b.raw()) for b in buffers))
    views, offset = [], 0
    for b in buffers:
        n = b.raw().nbytes
        views.append(region[offset : offset + n])
        offset += n
    out["pickle5_dump_ms"] = _median_ms(dump5, repeat)
    out["pickle5_allowlist_load_ms"] = _median_ms(lambda: _AllowlistUnpickler(io.BytesIO(stream), buffers=views).load(), repeat)
    out["pickle5_stream_kb"] = len(stream) / 1024
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {"knn": measure(large_estimator(args.mb), args.repeat), "digits_svc": measure(train_digits_svm(), 10)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
