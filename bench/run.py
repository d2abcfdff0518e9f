"""What verification and the sandbox cost, side by side with plain MLServer, in one run.

    .venv/bin/python bench/run.py [--quick] [--no-docker]

Writes bench/results/results.json, results.md and results.png. Every figure is a ratio to a
baseline measured in the same run (min / median / p95 over repeated runs).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import requests
from mlserver.settings import ModelParameters, ModelSettings
from mlserver_sklearn import SKLearnModel
from sklearn import datasets

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from digits_walkthrough.build import build, train_digits_svm  # noqa: E402

from authority.server import AuthorityServer  # noqa: E402
from authority.state import init_authority  # noqa: E402
from runtime import SigstoreModel  # noqa: E402
from tests.model_corpus import large_estimator  # noqa: E402
from tests.support import Authority, free_port, start_loader, start_mlserver, stop_process  # noqa: E402

SIGNER = "bench@example.com"
LOADER_MEMORY_MB = 2048  # the loader container's mem_limit (runtime/loader-hardening.json)
RESULTS = ROOT / "bench" / "results"


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "n": len(ordered)}


def timed(fn: Callable[[], object], repeat: int, pause: float = 0.0) -> list[float]:
    samples = []
    for _ in range(repeat):
        time.sleep(pause)
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def alternating(
    first: Callable[[], object], second: Callable[[], object], repeat: int, pause: float
) -> tuple[list[float], list[float]]:
    """`timed` for two calls taken in turns: first, second, first, ..."""
    firsts: list[float] = []
    seconds: list[float] = []
    for _ in range(repeat):
        firsts += timed(first, 1, pause)
        seconds += timed(second, 1, pause)
    return firsts, seconds


# Load latency samples are taken this far apart, baseline and ours alike, so that what one load
# leaves to background threads (freeing a large memfd's pages, reaping the child, refilling the
# pool; the plain load's freed arrays) is not billed to the next. The concurrency rows measure
# loads at once.
LOAD_PAUSE = 0.3


class Bench:
    def __init__(self, work: Path, quick: bool, docker: bool) -> None:
        self.work = work
        self.quick = quick
        self.docker = docker
        self.results: dict[str, object] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            }
        }
        state = init_authority(work / "authority")
        self.server = AuthorityServer(state)
        self.server.start_background()
        self.authority = Authority(state, self.server)
        self.models = work / "models"
        self.models.mkdir()

    def artefact(self, name: str, estimator: object) -> Path:
        path = self.models / name / "model.joblib"
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(estimator, path)
        self.authority.sign_file(path, SIGNER)
        return path

    def settings(self, path: Path, implementation: type, endpoint: str | None, sandbox: str = "endpoint") -> ModelSettings:
        policy = {"signers": [{"identity": SIGNER, "issuer": self.authority.issuer}], "trust_root": "local", "sandbox": sandbox}
        if endpoint:
            policy["endpoint"] = endpoint
        extra = {"sigstore": policy} if implementation is SigstoreModel else {}
        return ModelSettings(name=path.parent.name, implementation=implementation, parameters=ModelParameters(uri=str(path), extra=extra))

    # 1. load latency ---------------------------------------------------------------------
    def load_latency(self, label: str, path: Path, endpoint: str, repeat: int, docker_repeat: int) -> None:
        # One event loop per series, as MLServer loads models on its own loop.
        loop = asyncio.new_event_loop()
        sha = _sha256_times(path, repeat)
        stages: dict[str, list[float]] = {}

        def plain_load() -> None:
            loop.run_until_complete(SKLearnModel(self.settings(path, SKLearnModel, None)).load())

        def signed_load() -> None:
            model = SigstoreModel(self.settings(path, SigstoreModel, endpoint))
            loop.run_until_complete(model.load())

        # Stage timings come from the loader's header; client-side stages are measured here.
        import runtime.client as client
        import runtime.model as model_module

        original_fetch, original_load = client.verify_and_load, model_module.load_model

        async def fetch_timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            fetched = await original_fetch(*args, **kwargs)
            total = time.perf_counter() - started
            loader: dict[str, float] = {}
            for timing in fetched.header.timings:
                stages.setdefault(timing.stage, []).append(timing.seconds)
                loader[timing.stage] = timing.seconds
            # The artefact is read while the bundle is verified; the result is hashed while the
            # client loads it (which runs inside the call).
            get = loader.get
            loader_side = max(get("read", 0.0), get("verify", 0.0)) + get("queue", 0.0) + get("child_total", 0.0)
            server_load = stages["skops_load (server)"][-1] if stages.get("skops_load (server)") else 0.0
            stages.setdefault("handover (gRPC, fd, digests)", []).append(max(total - loader_side - server_load, 0.0))
            return fetched

        def load_timed(data, trusted):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            result = original_load(data, trusted)
            stages.setdefault("skops_load (server)", []).append(time.perf_counter() - started)
            return result

        model_module.verify_and_load, model_module.load_model = fetch_timed, load_timed
        try:
            # Taken in turns, so that whatever else the host does at the time slows both alike.
            plain, signed = alternating(plain_load, signed_load, repeat, LOAD_PAUSE)
        finally:
            model_module.verify_and_load, model_module.load_model = original_fetch, original_load
        entry: dict[str, object] = {
            "artefact_mb": round(path.stat().st_size / 2**20, 1),
            "plain": stats(plain),
            "sha256": stats(sha),
            "warm_loader": stats(signed),
            "warm_ratio": statistics.median(signed) / statistics.median(plain),
            "floor_ratio": statistics.median(signed) / (statistics.median(plain) + statistics.median(sha)),
            "warm_extra_ms": (statistics.median(signed) - statistics.median(plain)) * 1000,
            "stages": {k: stats(v) for k, v in stages.items()},
        }
        if self.docker and docker_repeat:
            os.environ["MLSERVER_SIGSTORE_DOCKER_TRUST_CONFIGS"] = f"local={self.authority.trust_config}"
            docker = timed(lambda: loop.run_until_complete(SigstoreModel(self.settings(path, SigstoreModel, None, "docker")).load()), docker_repeat)
            entry["docker_mode"] = stats(docker)
            entry["docker_ratio"] = statistics.median(docker) / statistics.median(plain)
        self.results[f"load_{label}"] = entry
        loop.close()

    # 2. hashing throughput ----------------------------------------------------------------
    def hash_throughput(self, path: Path) -> None:
        size_mb = path.stat().st_size / 2**20
        sha256sum = timed(lambda: subprocess.run(["sha256sum", str(path)], check=True, capture_output=True), 5)
        hash_stage = self.results["load_large"]["stages"]["read"]  # type: ignore[index]  # read and hashed in one pass
        verify_stage = self.results["load_large"]["stages"]["verify"]  # type: ignore[index]
        baseline = size_mb / statistics.median(sha256sum)
        ours = size_mb / hash_stage["median"]
        self.results["hashing"] = {
            "artefact_mb": round(size_mb, 1),
            "sha256sum_mb_s": stats([size_mb / s for s in sha256sum]),
            "loader_hash_mb_s": ours,
            "ratio_to_sha256sum": ours / baseline,
            "verify_after_hash_ms": verify_stage["median"] * 1000,
        }

    # 3. inference ---------------------------------------------------------------------------
    def inference(self, loader_endpoint: str, repo_root: Path, requests_n: int) -> None:
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb
        from mlserver.grpc import dataplane_pb2_grpc

        repo = repo_root / "repo"
        plain_dir = repo / "plain-model"
        plain_dir.mkdir()
        (plain_dir / "model-settings.json").write_text(json.dumps({
            "name": "plain-model", "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(repo_root / "artefacts" / "good-model" / "model.joblib")},
        }))
        http, grpc_port = free_port(), free_port()
        env = {"MLSERVER_SIGSTORE_ENDPOINT": loader_endpoint, "MLSERVER_HTTP_PORT": str(http),
               "MLSERVER_GRPC_PORT": str(grpc_port), "MLSERVER_METRICS_PORT": str(free_port())}
        proc = start_mlserver(repo, self.work, self.work / "mlserver.log", env)
        url = f"http://127.0.0.1:{http}"
        try:
            for name in ("plain-model", "good-model"):
                assert requests.post(f"{url}/v2/repository/models/{name}/load", timeout=60).status_code == 200
            digits = datasets.load_digits()
            sample = digits.images.reshape((len(digits.images), -1))[:8]
            payload = {"inputs": [{"name": "x", "shape": list(sample.shape), "datatype": "FP64", "data": sample.flatten().tolist()}]}
            tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=list(sample.shape), contents=pb.InferTensorContents(fp64_contents=sample.flatten().tolist()))
            session = requests.Session()
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = {
                "rest": lambda name: session.post(f"{url}/v2/models/{name}/infer", json=payload, timeout=30).raise_for_status(),
                "grpc": lambda name: stub.ModelInfer(pb.ModelInferRequest(model_name=name, inputs=[tensor]), timeout=30),
            }
            out: dict[str, object] = {}
            for protocol, call in calls.items():
                samples: dict[str, list[float]] = {"plain-model": [], "good-model": []}
                for name in samples:
                    for _ in range(20):
                        call(name)  # warm-up
                # Interleaved, so drift on the machine hits both alike.
                for _ in range(requests_n):
                    for name in samples:
                        started = time.perf_counter()
                        call(name)
                        samples[name].append(time.perf_counter() - started)
                plain, signed = stats(samples["plain-model"]), stats(samples["good-model"])
                out[protocol] = {
                    "plain_ms": {k: v * 1000 if k != "n" else v for k, v in plain.items()},
                    "signed_ms": {k: v * 1000 if k != "n" else v for k, v in signed.items()},
                    "latency_ratio": signed["median"] / plain["median"],
                    "throughput_ratio": sum(samples["plain-model"]) / sum(samples["good-model"]),
                }
            channel.close()
            self.results["inference"] = out
        finally:
            stop_process(proc)

    # 4. concurrent loads --------------------------------------------------------------------
    def concurrent(self, loader: object, estimator_bytes: bytes, sizes: list[int]) -> None:
        paths = []
        for i in range(max(sizes)):
            path = self.models / f"concurrent-{i}" / "model.joblib"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(estimator_bytes + b"\n" * (i + 1))  # distinct digests: no cache hits
            self.authority.sign_file(path, SIGNER)
            paths.append(path)
        out = {}
        for n in sizes:
            peak = _PeakRss(loader.process.pid)  # type: ignore[attr-defined]

            async def load_all(impl: type, endpoint: str | None, chosen: list[Path] = paths[:n]) -> None:
                await asyncio.gather(*(impl(self.settings(p, impl, endpoint)).load() for p in chosen))

            started = time.perf_counter()
            asyncio.run(load_all(SKLearnModel, None))
            plain = time.perf_counter() - started
            peak.start()
            started = time.perf_counter()
            asyncio.run(load_all(SigstoreModel, loader.endpoint))  # type: ignore[attr-defined]
            signed = time.perf_counter() - started
            out[str(n)] = {"plain_s": plain, "signed_s": signed, "ratio": signed / plain, "loader_peak_rss_mb": peak.stop() / 1024}
            # Fresh digests for the next size (the loader caches converted models).
            for i, path in enumerate(paths):
                path.write_bytes(estimator_bytes + b"\n" * (i + 1 + n * 100))
                self.authority.sign_file(path, SIGNER)
        self.results["concurrent_loads"] = out


    # 5. memory of one large load -------------------------------------------------------------
    def memory(self, loader: object, path: Path, repeat: int) -> None:
        """Peak memory of MLServer's process (a fresh process running the runtime) and of the loader."""
        out: dict[str, object] = {"artefact_mb": round(path.stat().st_size / 2**20, 1)}
        for impl in ("plain", "signed"):
            runs, loader_peaks = [], []
            for _ in range(repeat):
                spec = {"impl": impl, "name": path.parent.name, "uri": str(path)}
                if impl == "signed":
                    policy = {"signers": [{"identity": SIGNER, "issuer": self.authority.issuer}], "trust_root": "local",
                              "endpoint": loader.endpoint}  # type: ignore[attr-defined]
                    spec["extra"] = {"sigstore": policy}
                peak = _PeakRss(loader.process.pid)  # type: ignore[attr-defined]
                peak.start()
                probe = subprocess.run([sys.executable, str(ROOT / "bench" / "rss_probe.py"), json.dumps(spec)],
                                       check=True, capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
                loader_peaks.append(peak.stop() / 1024)
                runs.append(json.loads(probe.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda r: r["peak_rss_mb"])
            out[impl] = {**best, "loader_peak_pss_mb": min(loader_peaks)}
        self.results["memory_large"] = out

    # 6. models served in the sandbox ---------------------------------------------------------
    def sandboxed(self, small: Path, large: Path, requests_n: int, load_repeat: int) -> None:
        """The digits SVC served in the sandbox (execution "sandbox") vs the same file in plain
        SKLearnModel, through `mlserver start` over REST and gRPC; then loads and MLServer's RSS."""
        run_dir = self.work / "sandboxed-loader"
        run_dir.mkdir()
        loader = start_loader(run_dir, self.models, {"local": self.authority.trust_config}, "--cache-mb=0",
                              "--worker-memory-mb=4096", "--child-memory-mb=4096", "--max-result-mb=4096")
        policy = {"signers": [{"identity": SIGNER, "issuer": self.authority.issuer}], "trust_root": "local",
                  "endpoint": loader.endpoint, "execution": "sandbox"}
        out: dict[str, object] = {}
        try:
            repo = self.work / "sandboxed-repo"
            for name, impl, extra in (("plain-digits", "mlserver_sklearn.SKLearnModel", {}),
                                      ("sandboxed-digits", "runtime.SigstoreModel", {"sigstore": policy})):
                (repo / name).mkdir(parents=True)
                (repo / name / "model-settings.json").write_text(json.dumps(
                    {"name": name, "implementation": impl, "parameters": {"uri": str(small), "extra": extra}}))
            out.update(self._served_over_http(repo, requests_n, parallel_workers=0, concurrent=True))
            # MLServer's default: inference in one worker process, for both models alike.
            default = self._served_over_http(repo, requests_n, parallel_workers=1, concurrent=False, only_8_rows=True)
            out.update({f"{key}_parallel_workers_1": value for key, value in default.items()})
            print("  where an 8-row request's time goes ...", flush=True)
            out["profile_8_rows"] = self._sandboxed_profile(small, policy, requests_n * 3)
            out["load_small"] = self._sandboxed_loads(small, policy, load_repeat, floor=False)
            out["load_large"] = self._sandboxed_loads(large, policy, max(2, load_repeat // 4), floor=True)
            rss = {}
            for label, path in (("small", small), ("large", large)):
                spec = {"impl": "signed", "name": path.parent.name, "uri": str(path), "extra": {"sigstore": policy}}
                probe = subprocess.run([sys.executable, str(ROOT / "bench" / "rss_probe.py"), json.dumps(spec)], check=True,
                                       capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
                rss[label] = {**json.loads(probe.stdout.strip().splitlines()[-1]), "artefact_mb": round(path.stat().st_size / 2**20, 1)}
            out["mlserver_rss"] = rss
        finally:
            stop_process(loader.process)
        self.results["sandboxed"] = out

    def _served_over_http(self, repo: Path, requests_n: int, parallel_workers: int, concurrent: bool,
                          only_8_rows: bool = False) -> dict[str, object]:
        """Both models of `repo` through one `mlserver start` with `parallel_workers`, over REST and
        gRPC, interleaved: 8 rows and a 10,000-row batch, and 16 concurrent REST clients."""
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb
        from mlserver.grpc import dataplane_pb2_grpc

        out: dict[str, object] = {}
        http, grpc_port = free_port(), free_port()
        env = {"MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(grpc_port), "MLSERVER_METRICS_PORT": str(free_port()),
               "MLSERVER_PARALLEL_WORKERS": str(parallel_workers), "MLSERVER_GRPC_MAX_MESSAGE_LENGTH": str(64 << 20)}
        proc = start_mlserver(repo, self.work, self.work / f"mlserver-sandboxed-{parallel_workers}.log", env)
        url = f"http://127.0.0.1:{http}"
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_receive_message_length", 64 << 20),
                                                                            ("grpc.max_send_message_length", 64 << 20)])
        try:
            digits = datasets.load_digits().data
            batches = {"8_rows": digits[:8], "10000_rows": np.resize(digits, (10_000, digits.shape[1]))}
            if only_8_rows:
                del batches["10000_rows"]
            stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            for label, rows in batches.items():
                payload = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.flatten().tolist()}]}
                body = json.dumps(payload)
                tensor = pb.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP64", shape=list(rows.shape), contents=pb.InferTensorContents(fp64_contents=rows.flatten().tolist()))
                session = requests.Session()
                calls = {
                    "rest": lambda name, s=session, b=body: s.post(f"{url}/v2/models/{name}/infer", data=b,
                                                                  headers={"content-type": "application/json"}, timeout=120).raise_for_status(),
                    "grpc": lambda name, t=tensor: stub.ModelInfer(pb.ModelInferRequest(model_name=name, inputs=[t]), timeout=120),
                }
                n = requests_n if label == "8_rows" else max(5, requests_n // 20)
                for protocol, call in calls.items():
                    samples: dict[str, list[float]] = {"plain-digits": [], "sandboxed-digits": []}
                    for name in samples:
                        for _ in range(3 if label != "8_rows" else 20):
                            call(name)  # warm-up
                    for _ in range(n):  # interleaved: drift on the machine hits both alike
                        for name in samples:
                            started = time.perf_counter()
                            call(name)
                            samples[name].append(time.perf_counter() - started)
                    plain, ours = stats(samples["plain-digits"]), stats(samples["sandboxed-digits"])
                    print(f"  parallel_workers {parallel_workers}, {protocol} {label}: in process {plain['median']*1000:.2f} ms, "
                          f"sandboxed {ours['median']*1000:.2f} ms", flush=True)
                    out[f"{protocol}_{label}"] = {
                        "plain_ms": {k: v * 1000 if k != "n" else v for k, v in plain.items()},
                        "sandboxed_ms": {k: v * 1000 if k != "n" else v for k, v in ours.items()},
                        "throughput_ratio": sum(samples["plain-digits"]) / sum(samples["sandboxed-digits"]),
                    }
            if concurrent:
                out["rest_8_rows_16_clients"] = self._concurrently(url, batches["8_rows"], 16, max(10, requests_n // 5))
        finally:
            channel.close()
            stop_process(proc)
        return out

    @staticmethod
    def _concurrently(url: str, rows: np.ndarray, clients: int, each: int) -> dict[str, float]:
        """`clients` threads, each sending `each` requests back to back, plain then sandboxed
        (three times, best of each): requests per second and their ratio."""
        body = json.dumps({"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.flatten().tolist()}]})

        def burst(name: str) -> float:
            barrier = threading.Barrier(clients + 1)

            def client() -> None:
                session = requests.Session()
                barrier.wait()
                for _ in range(each):
                    session.post(f"{url}/v2/models/{name}/infer", data=body, headers={"content-type": "application/json"},
                                 timeout=120).raise_for_status()

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for t in threads:
                t.start()
            barrier.wait()
            started = time.perf_counter()
            for t in threads:
                t.join()
            return clients * each / (time.perf_counter() - started)

        plain, ours = [], []
        for _ in range(3):
            plain.append(burst("plain-digits"))
            ours.append(burst("sandboxed-digits"))
        return {"clients": clients, "plain_rps": max(plain), "sandboxed_rps": max(ours), "throughput_ratio": max(ours) / max(plain)}

    def _sandboxed_profile(self, path: Path, policy: dict, repeat: int) -> dict[str, float]:
        """Where an 8-row request's time goes, without HTTP, on MLServer's event loop (uvloop),
        interleaved with a 1 ms pause before each call (a server idles between a client's requests):
        the estimator's own predict; SKLearnModel.predict and SigstoreModel.predict (served in the
        sandbox); the direct channel's exchange alone; and the floor any second process sets, a
        round trip of as many bytes to an echoing process over a socket pair. Median microseconds."""
        import uvloop
        from mlserver.types import InferenceRequest, RequestInput

        from loader.contract import frame_head
        from runtime._internal.sandboxed import channel_request, encode_inputs

        name = path.parent.name
        plain = SKLearnModel(ModelSettings(name=name, implementation=SKLearnModel, parameters=ModelParameters(uri=str(path))))
        ours = SigstoreModel(ModelSettings(name=name, implementation=SigstoreModel,
                                           parameters=ModelParameters(uri=str(path), extra={"sigstore": policy})))
        rows = datasets.load_digits().data[:8]
        request = InferenceRequest(inputs=[RequestInput(name="x", shape=list(rows.shape), datatype="FP64", data=rows.flatten().tolist())])
        loop = uvloop.new_event_loop()
        echo = None
        try:
            loop.run_until_complete(plain.load())
            loop.run_until_complete(ours.load())
            estimator = ours._model
            arrays, frame, _ = encode_inputs(rows)
            header, buffers = channel_request("predict", arrays, frame)
            request_size = sum(b.nbytes for b in buffers)
            answer, body = loop.run_until_complete(estimator.channel.exchange(header, buffers, estimator.max_bytes, 60))
            echo = _Echo(len(frame_head(header, request_size)) + request_size, len(frame_head(answer, len(body))) + len(body))
            cases: dict[str, Callable[[], object]] = {
                "estimator": lambda: plain._model.predict(rows),
                "round_trip": echo.once,
                "plain_predict": lambda: loop.run_until_complete(plain.predict(request)),
                "sandboxed_predict": lambda: loop.run_until_complete(ours.predict(request)),
                "exchange": lambda: loop.run_until_complete(estimator.channel.exchange(header, buffers, estimator.max_bytes, 60)),
            }
            samples: dict[str, list[float]] = {label: [] for label in cases}
            for _ in range(20):
                for call in cases.values():
                    call()  # warm-up
            for _ in range(repeat):
                for label, call in cases.items():
                    time.sleep(0.001)
                    started = time.perf_counter()
                    call()
                    samples[label].append(time.perf_counter() - started)
            loop.run_until_complete(ours.unload())
        finally:
            if echo is not None:
                echo.close()
            loop.close()
        found = {label: statistics.median(values) * 1e6 for label, values in samples.items()}
        print("  " + ", ".join(f"{label} {us:.0f} us" for label, us in found.items()), flush=True)
        return found

    def _sandboxed_loads(self, path: Path, policy: dict, repeat: int, floor: bool) -> dict[str, object]:
        """SigstoreModel loads in sandbox mode (each ends its worker after) vs a plain SKLearnModel
        load, or vs the floor (plain joblib load + one SHA-256 pass)."""
        name = path.parent.name
        plain_settings = ModelSettings(name=name, implementation=SKLearnModel, parameters=ModelParameters(uri=str(path)))
        ours_settings = ModelSettings(name=name, implementation=SigstoreModel,
                                      parameters=ModelParameters(uri=str(path), extra={"sigstore": policy}))
        loop = asyncio.new_event_loop()
        try:
            def plain_load() -> None:
                model = SKLearnModel(plain_settings)
                loop.run_until_complete(model.load())
                if floor:
                    _sha256_times(path, 1)

            loaded: list[SigstoreModel] = []

            def ours_load() -> None:
                model = SigstoreModel(ours_settings)
                loop.run_until_complete(model.load())
                assert model.execution == "sandbox", model.execution
                loaded.append(model)

            def unload() -> None:  # between samples, not timed (plain loads have nothing to end)
                while loaded:
                    loop.run_until_complete(loaded.pop().unload())

            plain_load(), ours_load(), unload()  # warm-up
            baseline: list[float] = []
            ours: list[float] = []
            for _ in range(repeat):
                baseline += timed(plain_load, 1, LOAD_PAUSE)
                ours += timed(ours_load, 1, LOAD_PAUSE)
                unload()
        finally:
            loop.close()
        b, o = stats(baseline), stats(ours)
        return {"artefact_mb": round(path.stat().st_size / 2**20, 1), "baseline": "floor" if floor else "plain",
                "baseline_ms": {k: v * 1000 if k != "n" else v for k, v in b.items()},
                "sandboxed_ms": {k: v * 1000 if k != "n" else v for k, v in o.items()},
                "ratio": o["median"] / b["median"], "extra_ms": (o["median"] - b["median"]) * 1000}

    # 7. skops' own options -----------------------------------------------------------------
    def convert_options(self, megabytes: int) -> None:
        """skops.io.dump with each compression it offers, on a k-NN of `megabytes` (random floats)
        and on the digits SVC: convert time, size and load time, in this process."""
        import zipfile

        import skops.io

        out: dict[str, object] = {}
        for label, model in (("knn", large_estimator(megabytes)), ("digits_svc", train_digits_svm())):
            rows = {}
            for name, compression, level in (
                ("stored", zipfile.ZIP_STORED, None), ("deflated-1", zipfile.ZIP_DEFLATED, 1),
                ("deflated-6", zipfile.ZIP_DEFLATED, 6), ("bzip2-9", zipfile.ZIP_BZIP2, 9), ("lzma", zipfile.ZIP_LZMA, None),
            ):
                started = time.perf_counter()
                data = skops.io.dumps(model, compression=compression, compresslevel=level)
                dumped = time.perf_counter() - started
                types = skops.io.get_untrusted_types(data=data)
                started = time.perf_counter()
                skops.io.loads(data, trusted=types)
                loaded = time.perf_counter() - started
                rows[name] = {"dump_ms": dumped * 1000, "load_ms": loaded * 1000, "size_mb": len(data) / 2**20}
            out[label] = rows
        out["knn_mb"] = megabytes
        self.results["convert_options"] = out


class _PeakRss:
    """Samples the summed proportional set size (PSS) of a process tree on a thread.

    PSS splits shared pages among their users: forked children share most of the fork server's
    memory, which summed RSS would count once per child."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            pid = frontier.pop()
            children = []
            # Any thread may be the parent (the fork server is started from the pool's thread).
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    children += (task / "children").read_text().split()
                except OSError:
                    continue
            pids += [int(c) for c in children]
            frontier += [int(c) for c in children]
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    total += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:"))
                except (OSError, StopIteration):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class _Echo:
    """A second process at the end of a socket pair that answers each request of `request_size`
    bytes with `answer_size` bytes: the least a request served by another process costs."""

    _SCRIPT = (
        "import socket, sys\n"
        "s = socket.socket(fileno=int(sys.argv[1])); need, answer = int(sys.argv[2]), bytes(int(sys.argv[3]))\n"
        "buf = memoryview(bytearray(need))\n"
        "while True:\n"
        "    got = 0\n"
        "    while got < need:\n"
        "        n = s.recv_into(buf[got:])\n"
        "        if not n: sys.exit(0)\n"
        "        got += n\n"
        "    s.sendall(answer)\n"
    )

    def __init__(self, request_size: int, answer_size: int) -> None:
        import socket

        self._sock, theirs = socket.socketpair()
        self._process = subprocess.Popen([sys.executable, "-c", self._SCRIPT, str(theirs.fileno()), str(request_size), str(answer_size)],
                                         pass_fds=[theirs.fileno()])
        theirs.close()
        self._request, self._answer = bytes(request_size), bytearray(answer_size)

    def once(self) -> None:
        self._sock.sendall(self._request)
        view, got = memoryview(self._answer), 0
        while got < len(self._answer):
            got += self._sock.recv_into(view[got:])

    def close(self) -> None:
        self._sock.close()
        self._process.wait(timeout=60)


def _sha256_times(path: Path, repeat: int) -> list[float]:
    """hashlib.sha256 over the artefact's bytes, already in memory: the one pass verification needs."""
    raw = path.read_bytes()
    return timed(lambda: hashlib.sha256(raw).hexdigest(), repeat)


def write_reports(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| measure | baseline | mlserver-sigstore | ratio | target |", "| --- | --- | --- | --- | --- |"]
    for label in ("small", "large"):
        entry = results.get(f"load_{label}")
        if not entry:
            continue
        p, w = entry["plain"], entry["warm_loader"]
        lines.append(
            f"| load {label} ({entry['artefact_mb']} MB), warm loader | plain {p['median']*1000:.1f} ms (min {p['min']*1000:.1f}, p95 {p['p95']*1000:.1f}) "
            f"| {w['median']*1000:.1f} ms (min {w['min']*1000:.1f}, p95 {w['p95']*1000:.1f}) | {entry['warm_ratio']:.2f}x plain (+{entry['warm_extra_ms']:.0f} ms) "
            + (f"| plain + 20 ms: {'met' if entry['warm_extra_ms'] <= 20 else 'missed'} |" if label == "small" else "| none |")
        )
        if label == "large":
            floor = (p["median"] + entry["sha256"]["median"]) * 1000
            lines.append(
                f"| load large vs the floor | plain + sha256 {floor:.0f} ms | {w['median']*1000:.0f} ms | {entry['floor_ratio']:.2f}x "
                f"| <= 4x: {'met' if entry['floor_ratio'] <= 4 else 'missed'} |"
            )
        if "docker_mode" in entry:
            d = entry["docker_mode"]
            lines.append(f"| load {label}, docker (ephemeral) mode | {p['median']*1000:.1f} ms | {d['median']*1000:.0f} ms (min {d['min']*1000:.0f}, p95 {d['p95']*1000:.0f}) | {entry['docker_ratio']:.1f}x | none |")
    if "hashing" in results:
        h = results["hashing"]
        lines.append(f"| read + hash {h['artefact_mb']} MB | sha256sum {h['sha256sum_mb_s']['median']:.0f} MB/s | loader {h['loader_hash_mb_s']:.0f} MB/s | {h['ratio_to_sha256sum']:.2f} | >= 0.90: {'met' if h['ratio_to_sha256sum'] >= 0.9 else 'missed'} |")
    for protocol, entry in results.get("inference", {}).items():
        met = 0.95 <= entry["latency_ratio"] <= 1.05
        lines.append(
            f"| inference {protocol}, 8 digits | {entry['plain_ms']['median']:.2f} ms (p95 {entry['plain_ms']['p95']:.2f}) | {entry['signed_ms']['median']:.2f} ms (p95 {entry['signed_ms']['p95']:.2f}) "
            f"| {entry['latency_ratio']:.3f} (throughput {entry['throughput_ratio']:.3f}) | 0.95-1.05: {'met' if met else 'missed'} |"
        )
    mem = results.get("memory_large")
    if mem:
        plain, signed, size = mem["plain"], mem["signed"], mem["artefact_mb"]
        extra = signed["peak_rss_mb"] - plain["peak_rss_mb"]
        lines.append(
            f"| MLServer process peak RSS, large load | {plain['peak_rss_mb']:.0f} MB | {signed['peak_rss_mb']:.0f} MB "
            f"(anonymous {signed['peak_anon_mb']:.0f} vs {plain['peak_anon_mb']:.0f} MB) | +{extra:.0f} MB = {extra / size:.2f}x model "
            f"| <= plain + 1.2x model: {'met' if extra <= 1.2 * size else 'missed'} |"
        )
        lines.append(f"| loader peak PSS, large load | idle {mem['plain']['loader_peak_pss_mb']:.0f} MB | {signed['loader_peak_pss_mb']:.0f} MB | | none |")
    for n, entry in results.get("concurrent_loads", {}).items():
        within = entry["loader_peak_rss_mb"] <= LOADER_MEMORY_MB
        lines.append(
            f"| {n} concurrent small loads | {entry['plain_s']*1000:.0f} ms | {entry['signed_s']*1000:.0f} ms, loader peak PSS {entry['loader_peak_rss_mb']:.0f} MB "
            f"| {entry['ratio']:.1f}x | PSS <= {LOADER_MEMORY_MB} MB: {'met' if within else 'missed'} |"
        )
    lines += _sandboxed_lines(results.get("sandboxed"))
    stage_lines = ["", "Warm-path stages (median ms):", "", "| stage | small | large |", "| --- | --- | --- |"]
    small, large = results.get("load_small", {}).get("stages", {}), results.get("load_large", {}).get("stages", {})
    for stage in dict.fromkeys([*small, *large]):
        cells = [f"{d[stage]['median']*1000:.1f}" if stage in d else "-" for d in (small, large)]
        stage_lines.append(f"| {stage} | {cells[0]} | {cells[1]} |")
    options = results.get("convert_options", {})
    if options:
        stage_lines += ["", f"skops.io.dump options (k-NN of {options['knn_mb']} MB of random floats; digits SVC):", "",
                        "| model | compression | dump ms | load ms | size MB |", "| --- | --- | --- | --- | --- |"]
        for label in ("knn", "digits_svc"):
            for name, row in options[label].items():
                stage_lines.append(f"| {label} | {name} | {row['dump_ms']:.1f} | {row['load_ms']:.1f} | {row['size_mb']:.2f} |")
    m = results["machine"]
    load = m.get("load_average")
    header = [f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}"
              + (f"; load average at start {load[0]:.1f}, at end {load[1]:.1f}." if load else "."), ""]
    (RESULTS / "results.md").write_text("\n".join(header + lines + stage_lines) + "\n")
    _plot(results)


def _sandboxed_lines(entry: dict | None) -> list[str]:
    """Rows for a model served in the sandbox (execution "sandbox"), against the same file in process."""
    if not entry:
        return []
    lines = []
    keys = (("rest_8_rows", 0.95), ("grpc_8_rows", 0.95), ("rest_10000_rows", 0.9), ("grpc_10000_rows", 0.9),
            ("rest_8_rows_parallel_workers_1", 0.95), ("grpc_8_rows_parallel_workers_1", 0.95))
    for key, target in keys:
        if key not in entry:
            continue
        e, (protocol, label) = entry[key], key.split("_", 1)
        label = label.replace("_parallel_workers_1", ", parallel_workers 1 (MLServer's default)").replace("_", " ")
        lines.append(
            f"| sandboxed inference {protocol}, {label} | in process {e['plain_ms']['median']:.2f} ms (p95 {e['plain_ms']['p95']:.2f}) "
            f"| sandboxed {e['sandboxed_ms']['median']:.2f} ms (p95 {e['sandboxed_ms']['p95']:.2f}) | throughput {e['throughput_ratio']:.3f} "
            f"| >= {target}: {'met' if e['throughput_ratio'] >= target else 'missed'} |"
        )
    c = entry.get("rest_8_rows_16_clients")
    if c:
        lines.append(
            f"| sandboxed inference rest, 8 rows, {c['clients']} clients | {c['plain_rps']:.0f} req/s | {c['sandboxed_rps']:.0f} req/s "
            f"| throughput {c['throughput_ratio']:.3f} | >= 0.9: {'met' if c['throughput_ratio'] >= 0.9 else 'missed'} |"
        )
    for label, limit in (("load_small", None), ("load_large", 1.5)):
        e = entry.get(label)
        if not e:
            continue
        b, o = e["baseline_ms"], e["sandboxed_ms"]
        verdict = (f"<= {limit}x the floor: {'met' if e['ratio'] <= limit else 'missed'}" if limit
                   else f"<= plain + 10 ms: {'met' if e['extra_ms'] <= 10 else 'missed'}")
        lines.append(
            f"| sandboxed load {label[5:]} ({e['artefact_mb']} MB) | {e['baseline']} {b['median']:.1f} ms (p95 {b['p95']:.1f}) "
            f"| {o['median']:.1f} ms (p95 {o['p95']:.1f}) | {e['ratio']:.2f}x (+{e['extra_ms']:.1f} ms) | {verdict} |"
        )
    lines += _profile_lines(entry)
    rss = entry.get("mlserver_rss")
    if rss:
        s, g = rss["small"], rss["large"]
        grew = g["peak_rss_mb"] - s["peak_rss_mb"]
        lines.append(
            f"| MLServer process peak RSS, sandboxed model | small ({s['artefact_mb']} MB): {s['peak_rss_mb']:.0f} MB "
            f"| large ({g['artefact_mb']} MB): {g['peak_rss_mb']:.0f} MB | +{grew:.0f} MB | does not grow with the model: "
            f"{'met' if grew < 0.1 * g['artefact_mb'] else 'missed'} |"
        )
    return lines


def _profile_lines(entry: dict) -> list[str]:
    """The 8-row request's extra time, split: what a second process costs at least (the round trip),
    what the worker adds past its estimator and that floor, and what MLServer's side adds."""
    p = entry.get("profile_8_rows")
    if not p:
        return []
    extra = p["sandboxed_predict"] - p["plain_predict"]
    channel = p["exchange"] - p["estimator"]
    lines = [
        f"| 8 rows without HTTP (uvloop, 1 ms apart) | SKLearnModel.predict {p['plain_predict']:.0f} us (estimator {p['estimator']:.0f} us) "
        f"| SigstoreModel.predict {p['sandboxed_predict']:.0f} us | +{extra:.0f} us: round trip {p['round_trip']:.0f}, worker past its "
        f"estimator and the round trip {channel - p['round_trip']:.0f}, MLServer side {extra - channel:.0f} | profile |"
    ]
    for protocol in ("rest", "grpc"):
        e = entry.get(f"{protocol}_8_rows")
        if e:
            plain = e["plain_ms"]["median"] * 1000
            lines.append(
                f"| 8 rows over {protocol}: ceiling with a second process | in process {plain:.0f} us + round trip {p['round_trip']:.0f} us "
                f"| sandboxed {e['sandboxed_ms']['median'] * 1000:.0f} us | ceiling {plain / (plain + p['round_trip']):.3f}, "
                f"with the runtime's extra {plain / (plain + extra):.3f} | profile |"
            )
    return lines


def _plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, plain, signed = [], [], []
    for label in ("small", "large"):
        entry = results.get(f"load_{label}")
        if entry:
            labels.append(f"load {label}")
            plain.append(entry["plain"]["median"] * 1000)
            signed.append(entry["warm_loader"]["median"] * 1000)
    for protocol, entry in results.get("inference", {}).items():
        labels.append(f"infer {protocol}")
        plain.append(entry["plain_ms"]["median"])
        signed.append(entry["signed_ms"]["median"])
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(len(labels))
    ax.bar(xs - 0.2, plain, 0.4, label="plain MLServer sklearn runtime")
    ax.bar(xs + 0.2, signed, 0.4, label="runtime.SigstoreModel (warm loader)")
    ax.set_xticks(xs, labels)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "results.png", dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a 64 MB large model")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker (ephemeral) mode")
    parser.add_argument("--large-mb", type=int, default=200)
    parser.add_argument("--only-sandboxed", action="store_true", help="only the rows of a model served in the sandbox")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    started_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        bench = Bench(work, args.quick, not args.no_docker)
        small = bench.artefact("small", train_digits_svm())
        large = bench.artefact("large", large_estimator(64 if args.quick else args.large_mb))
        if args.only_sandboxed:
            print("models served in the sandbox ...", flush=True)
            try:
                bench.sandboxed(small, large, 100 if args.quick else 300, 10 if args.quick else 20)
            finally:
                bench.server.shutdown()
            print(json.dumps(bench.results["sandboxed"], indent=2))
            print("\n".join(_sandboxed_lines(bench.results["sandboxed"])))  # type: ignore[arg-type]
            return 0
        loader = start_loader(work / "loader-run" if (work / "loader-run").mkdir() is None else work, bench.models,
                              {"local": bench.authority.trust_config}, "--cache-mb=0", "--child-memory-mb=4096",
                              "--max-result-mb=4096", "--max-concurrent-loads=2")
        try:
            print("load latency, small ...", flush=True)
            bench.load_latency("small", small, loader.endpoint, 10 if args.quick else 40, 2 if args.quick else 5)
            print("load latency, large ...", flush=True)
            bench.load_latency("large", large, loader.endpoint, 3 if args.quick else 9, 1 if args.quick else 3)
            bench.hash_throughput(large)
            print("inference ...", flush=True)
            build(work / "walkthrough", work / "walkthrough-authority")
            walk_loader = start_loader(work / "walkthrough", work / "walkthrough" / "artefacts", {"local": work / "walkthrough" / "trust" / "trust_config.json"})
            try:
                bench.inference(walk_loader.endpoint, work / "walkthrough", 100 if args.quick else 300)
            finally:
                stop_process(walk_loader.process)
            print("memory of the large load ...", flush=True)
            bench.memory(loader, large, 2)
            print("concurrent loads ...", flush=True)
            bench.concurrent(loader, small.read_bytes(), [1, 4, 16])
            print("models served in the sandbox ...", flush=True)
            bench.sandboxed(small, large, 100 if args.quick else 300, 10 if args.quick else 20)
            print("skops options ...", flush=True)
            bench.convert_options(16 if args.quick else 32)
        finally:
            stop_process(loader.process)
            bench.server.shutdown()
        bench.results["machine"]["load_average"] = [started_load, os.getloadavg()[0]]  # type: ignore[index]
        write_reports(bench.results)
    print((RESULTS / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
