"""One model load in a fresh process, reporting the memory it took: what MLServer's process pays.

    python bench/rss_probe.py '{"impl": "plain"|"signed", "name": ..., "uri": ..., "extra": {...}}'

Prints one JSON line: resident memory before the load, the peak during it (VmHWM, reset just
before the load) and the peak of private (anonymous) memory, sampled every 2 ms. Shared pages
of a mapped memfd count in RSS but are not a copy; anonymous memory is what the process copied.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return values


def main() -> int:
    spec = json.loads(sys.argv[1])
    sys.path[:0] = [str(ROOT)]
    from mlserver.settings import ModelParameters, ModelSettings
    from mlserver_sklearn import SKLearnModel

    from runtime import SigstoreModel

    impl = SigstoreModel if spec["impl"] == "signed" else SKLearnModel
    settings = ModelSettings(
        name=spec["name"], implementation=impl, parameters=ModelParameters(uri=spec["uri"], extra=spec.get("extra", {}))
    )
    model = impl(settings)
    before = _status()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    peak_anon = before["RssAnon"]
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not done.is_set():
            peak_anon = max(peak_anon, _status()["RssAnon"])
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    asyncio.run(model.load())
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    after = _status()
    print(json.dumps({
        "seconds": elapsed,
        "rss_before_mb": before["VmRSS"] / 1024,
        "peak_rss_mb": after["VmHWM"] / 1024,
        "peak_anon_mb": max(peak_anon, after["RssAnon"]) / 1024,
        "rss_after_mb": after["VmRSS"] / 1024,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
