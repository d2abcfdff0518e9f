"""The loader under gVisor beside the default runtime, in one run (issue 29).

    MLSERVER_SIGSTORE_TAG=<tag> .venv/bin/python bench/gvisor.py [--large-mb 200] [--repeat 5]

Starts the hardened loader container (runtime/loader-hardening.json) under runc, then under
runsc as compose.gvisor.yaml runs it, and times, through SigstoreModel as MLServer uses it:
cold loads (--cache-mb=0: read, verify, unpickle and convert in the confined child, hand over)
of the digits SVM and of a k-NN classifier of --large-mb, and predicts of the digits SVM served
in the sandbox (execution "sandbox"). Under runc the model comes back as a sealed memfd; under
gVisor, streamed (descriptors do not cross gVisor's boundary). The loader's own stage timings
(from its log) say where the time goes. Writes bench/results/gvisor.json and prints a table.
Needs the images (scripts/setup.sh) and the runsc runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from digits_walkthrough.build import train_digits_svm  # noqa: E402

from tests.container.conftest import RUNTIMES, LoaderContainer, running_loader  # noqa: E402
from tests.model_corpus import large_estimator  # noqa: E402
from tests.support import runsc_available, start_authority  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Room for a large cold load in the 2 GB container: the child's memory and the result's size.
LOADER_ARGS = ("--cache-mb=0", "--child-memory-mb=1536", "--max-result-mb=1024", "--child-wall-seconds=300", "--child-cpu-seconds=300")
STAGES = ("read", "verify", "child_unpickle", "child_convert", "child_total", "result_hash")


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"min": ordered[0], "median": statistics.median(ordered), "max": ordered[-1], "n": len(ordered)}


def _stages(loader: LoaderContainer, prefix: str) -> dict[str, float]:
    """Median seconds per loader stage over the loads of models named `prefix`*."""
    per_stage: dict[str, list[float]] = {}
    for line in loader.container.logs(stdout=False, stderr=True).decode(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if str(record.get("model", "")).startswith(prefix) and record.get("verdict") == "loaded":
                for stage, seconds in record.get("timings", {}).items():
                    per_stage.setdefault(stage, []).append(seconds)
    return {s: statistics.median(v) for s, v in per_stage.items() if s in STAGES}


def _loads(loader: LoaderContainer, authority: object, label: str, data: bytes, repeat: int) -> dict[str, object]:
    loop = asyncio.new_event_loop()
    samples = []
    for i in range(repeat + 1):  # the first load warms the client's channel; not counted
        model = loader.model(f"{label}-{i}", data, authority)  # type: ignore[arg-type]
        started = time.perf_counter()
        assert loop.run_until_complete(model.load())
        if i:
            samples.append(time.perf_counter() - started)
        del model
    loop.run_until_complete(asyncio.sleep(0.1))  # the models' release calls, started when dropped
    loop.close()
    return {"seconds": _stats(samples), "loader_stages": _stages(loader, f"{label}-")}


def _streamed(loader: LoaderContainer, label: str, repeat: int, authority: object) -> dict[str, float]:
    """Seconds of raw streamed VerifyAndLoad calls (no descriptor, no client-side load): the
    loader's stages plus the bytes through gRPC on the loader's socket."""
    import grpc

    from loader.proto.v1 import loader_pb2, loader_pb2_grpc
    from tests.support import SIGNER

    signer = loader_pb2.Signer(identity=SIGNER, issuer=authority.issuer)  # type: ignore[attr-defined]
    request = loader_pb2.VerifyAndLoadRequest(artefact=f"{label}-0/model.joblib", signers=[signer])
    samples = []
    options = [("grpc.max_receive_message_length", 8 << 20)]
    with grpc.insecure_channel(loader.endpoint, options=options) as channel:
        stub = loader_pb2_grpc.LoaderStub(channel)
        for _ in range(repeat):
            started = time.perf_counter()
            received = sum(len(r.chunk) for r in stub.VerifyAndLoad(request, timeout=600))
            samples.append(time.perf_counter() - started)
            assert received > 0
    return _stats(samples)


def _sandboxed_predicts(loader: LoaderContainer, authority: object, data: bytes, x: np.ndarray, repeat: int) -> dict[str, object]:
    loop = asyncio.new_event_loop()
    model = loader.model("served", data, authority, execution="sandbox")  # type: ignore[arg-type]
    started = time.perf_counter()
    assert loop.run_until_complete(model.load())
    load = time.perf_counter() - started
    estimator = model._model  # noqa: SLF001 - the SandboxedEstimator MLServer calls
    samples = []
    for _ in range(repeat * 10 + 1):
        started = time.perf_counter()
        loop.run_until_complete(estimator.call("predict", x))
        samples.append(time.perf_counter() - started)
    loop.close()
    return {"load_seconds": load, "predict_seconds": _stats(samples[1:])}


def measure(client: docker.DockerClient, authority: object, runtime: str, models: dict[str, bytes], x: np.ndarray, repeat: int) -> dict[str, object]:
    out: dict[str, object] = {}
    with running_loader(client, authority, *LOADER_ARGS, runtime=runtime) as loader:  # type: ignore[arg-type]
        os.environ["MLSERVER_SIGSTORE_ARTEFACTS_ROOT"] = str(loader.models)
        for label, data in models.items():
            print(f"  {runtime}: cold loads, {label} ...", flush=True)
            out[f"load_{label}"] = _loads(loader, authority, label, data, repeat)
            out[f"streamed_{label}"] = _streamed(loader, label, max(repeat // 2, 2), authority)
        print(f"  {runtime}: sandboxed predicts ...", flush=True)
        out["sandboxed"] = _sandboxed_predicts(loader, authority, models["small"], x, repeat)
    return out


def table(results: dict[str, dict]) -> str:
    runc, runsc = results["runc"], results["runsc"]
    lines = ["| path | runc (median) | runsc (median) | ratio |", "| --- | --- | --- | --- |"]
    for key in ("load_small", "load_large"):
        a, b = runc[key]["seconds"]["median"], runsc[key]["seconds"]["median"]
        lines.append(f"| cold load, {key[5:]} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.2f}x |")
    for key in ("streamed_small", "streamed_large"):
        a, b = runc[key]["median"], runsc[key]["median"]
        lines.append(f"| raw streamed VerifyAndLoad, {key[9:]} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.2f}x |")
    a, b = runc["sandboxed"]["predict_seconds"]["median"], runsc["sandboxed"]["predict_seconds"]["median"]
    lines.append(f"| sandboxed predict (4 rows) | {a * 1000:.1f} ms | {b * 1000:.1f} ms | {b / a:.2f}x |")
    a, b = runc["sandboxed"]["load_seconds"], runsc["sandboxed"]["load_seconds"]
    lines.append(f"| sandboxed load (one) | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.2f}x |")
    lines += ["", "Loader stages, median ms (runc / runsc):", "", "| stage | small | large |", "| --- | --- | --- |"]
    for stage in STAGES:
        cells = []
        for key in ("load_small", "load_large"):
            a, b = runc[key]["loader_stages"].get(stage), runsc[key]["loader_stages"].get(stage)
            cells.append(f"{a * 1000:.1f} / {b * 1000:.1f}" if a is not None and b is not None else "-")
        lines.append(f"| {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not runsc_available():
        print("the runsc runtime is not registered with Docker: run scripts/setup.sh", file=sys.stderr)
        return 2
    client = docker.from_env()
    authority = start_authority(Path(tempfile.mkdtemp(prefix="bench-gvisor-")))
    small = io.BytesIO()
    joblib.dump(train_digits_svm(), small)
    large = io.BytesIO()
    joblib.dump(large_estimator(args.large_mb), large)
    models = {"small": small.getvalue(), "large": large.getvalue()}
    del large
    from sklearn import datasets

    x = datasets.load_digits().images.reshape((-1, 64))[-4:]
    results: dict[str, dict] = {"sizes_bytes": {k: len(v) for k, v in models.items()}}  # type: ignore[dict-item]
    try:
        for runtime in RUNTIMES:
            results[runtime] = measure(client, authority, runtime, models, x, args.repeat)
    finally:
        authority.server.shutdown()  # type: ignore[attr-defined]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gvisor.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
