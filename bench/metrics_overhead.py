"""Cost of recording metrics, and of a scrape: MetricWriter vs prometheus_client.

Per batch of 1,000 observations a worker records: observations_total += 1000,
batches_processed_total += 1, one batch_size observation, and 1,000
observation_latency_seconds observations. We time that

* with ``metrics.writer.MetricWriter`` on a worker row of a shared-memory
  ``MetricArray`` (one ``observe_many``), and
* with prometheus_client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
  the usual way to get metrics out of several processes), whose API records a
  histogram one ``observe()`` at a time,

side by side in the same run, median of several repeats. Then the exporter's
scrape (collect + ``generate_latest``) with 16 worker rows and 1,000 spaces,
every cell populated.

Usage: python bench/metrics_overhead.py [--repeats 7]
Writes bench/results/metrics_overhead.json.
"""

from __future__ import annotations

import os
import sys
import tempfile

# prometheus_client picks its value class at import time: set this first.
_MULTIPROC_DIR = tempfile.mkdtemp(prefix="engram-bench-prom-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _MULTIPROC_DIR

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import numpy as np  # noqa: E402
import prometheus_client  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metrics import catalog as cat  # noqa: E402
from metrics.array import MetricArray  # noqa: E402
from metrics.collector import ArrayCollector  # noqa: E402
from metrics.writer import MetricWriter  # noqa: E402
from shm.segment import object_name  # noqa: E402

BATCH = 1000
LAT_BUCKETS = cat.BY_NAME["observation_latency_seconds"].buckets
SIZE_BUCKETS = cat.BY_NAME["batch_size"].buckets


def timed(fn, n: int, repeats: int) -> list[float]:
    """Seconds per call of fn, one figure per repeat."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return out


def calibrate(fn, target_s: float = 0.2) -> int:
    """Calls per repeat so that one repeat lasts about ``target_s``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= target_s / 10:
            return max(1, int(n * target_s / dt))
        n *= 2


def bench_record(repeats: int) -> dict:
    lat = np.random.default_rng(1).exponential(0.05, BATCH)
    lat_list = lat.tolist()

    name = object_name(f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}", "metrics")
    arr = MetricArray.create(name, n_workers=16, max_spaces=1024)
    try:
        w = MetricWriter(arr, arr.row_map.worker(0))

        def ours():
            w.inc("observations_total", BATCH, memory_space=3, priority="normal")
            w.inc("batches_processed_total", worker_id=0)
            w.observe("batch_size", BATCH, worker_id=0)
            w.observe_many("observation_latency_seconds", lat, memory_space=3)

        reg = CollectorRegistry()
        obs = Counter("observations_total", "x", ["memory_space", "priority"], registry=reg)
        batches = Counter("batches_processed_total", "x", ["worker_id"], registry=reg)
        bsize = Histogram("batch_size", "x", ["worker_id"], buckets=SIZE_BUCKETS, registry=reg)
        olat = Histogram("observation_latency_seconds", "x", ["memory_space"],
                         buckets=LAT_BUCKETS, registry=reg)

        def theirs():
            obs.labels("default", "normal").inc(BATCH)
            batches.labels("0").inc()
            bsize.labels("0").observe(BATCH)
            h = olat.labels("default")
            for v in lat_list:
                h.observe(v)

        ours(), theirs()  # warm caches and files
        n_ours, n_theirs = calibrate(ours), calibrate(theirs)
        ours_s, theirs_s = [], []
        for _ in range(repeats):  # interleaved: both see the same machine state
            ours_s += timed(ours, n_ours, 1)
            theirs_s += timed(theirs, n_theirs, 1)
        # Sanity: both recorded what we think they recorded.
        h = w.value("observation_latency_seconds", memory_space=3)
        assert h["count"] % BATCH == 0 and h["count"] > BATCH * n_ours * repeats
        mp_files = os.listdir(_MULTIPROC_DIR)
        assert mp_files, "prometheus_client is not in multiprocess mode"
    finally:
        w = None  # drop the writer's view of the array before closing it
        arr.close()
        arr.unlink()
    o, t = statistics.median(ours_s), statistics.median(theirs_s)
    return {
        "batch_observations": BATCH,
        "engram_per_batch_us": o * 1e6,
        "engram_per_observation_ns": o / BATCH * 1e9,
        "prometheus_multiproc_per_batch_us": t * 1e6,
        "prometheus_multiproc_per_observation_ns": t / BATCH * 1e9,
        "ratio": t / o,
        "engram_repeats_us": [x * 1e6 for x in ours_s],
        "prometheus_repeats_us": [x * 1e6 for x in theirs_s],
        "calls_per_repeat": {"engram": n_ours, "prometheus": n_theirs},
    }


def bench_scrape(repeats: int, n_workers: int = 16, n_spaces: int = 1000) -> dict:
    arr = MetricArray.in_memory(n_workers, max_spaces=1024)
    rng = np.random.default_rng(2)
    for slot in range(n_workers):  # every cell of every worker row populated
        row = arr.cells[arr.row_map.worker(slot)]
        row[:] = rng.integers(0, 1000, row.shape)
    names = {i: f"space-{i:04d}" for i in range(n_spaces)}
    collector = ArrayCollector(arr, lambda: names, lambda: {
        "queue_depth": [({"priority": p}, 1.0) for p in cat.DOMAINS["priority"]]})
    reg = CollectorRegistry()
    reg.register(collector)

    def collect():
        for _ in collector.collect():
            pass

    text = generate_latest(reg)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    res = {"workers": n_workers, "spaces": n_spaces, "series": series,
           "text_bytes": len(text), "array_bytes": arr.cells.nbytes}
    for key, fn in (("collect_ms", collect), ("text_scrape_ms", lambda: generate_latest(reg)),
                    ("openmetrics_scrape_ms", lambda: generate_openmetrics(reg))):
        res[key] = statistics.median(timed(fn, 3, repeats)) * 1e3
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "metrics_overhead.json"))
    args = ap.parse_args(argv)
    try:
        rec = bench_record(args.repeats)
    finally:
        shutil.rmtree(_MULTIPROC_DIR, ignore_errors=True)
    scr = bench_scrape(args.repeats)

    print(f"Recording one batch of {BATCH} observations (median of {args.repeats} repeats)")
    print(f"  {'':32} {'per batch':>12} {'per observation':>16}")
    print(f"  {'engram MetricWriter (shm row)':32} {rec['engram_per_batch_us']:>9.2f} us "
          f"{rec['engram_per_observation_ns']:>13.2f} ns")
    print(f"  {'prometheus_client multiprocess':32} {rec['prometheus_multiproc_per_batch_us']:>9.0f} us "
          f"{rec['prometheus_multiproc_per_observation_ns']:>13.0f} ns")
    print(f"  ratio: engram is {rec['ratio']:.0f}x cheaper")
    print(f"Scrape: {scr['workers']} worker rows, {scr['spaces']} spaces, {scr['series']} samples, "
          f"{scr['text_bytes'] / 1e6:.1f} MB text, array {scr['array_bytes'] / 1e6:.1f} MB")
    print(f"  collect {scr['collect_ms']:.1f} ms   text scrape {scr['text_scrape_ms']:.1f} ms   "
          f"openmetrics scrape {scr['openmetrics_scrape_ms']:.1f} ms")

    result = {
        "benchmark": "metrics_overhead",
        "record": rec,
        "scrape": scr,
        "environment": {
            "python": platform.python_version(), "numpy": np.__version__,
            "prometheus_client": getattr(prometheus_client, "__version__", None)
            or _dist_version("prometheus_client"),
            "machine": platform.machine(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


def _dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
