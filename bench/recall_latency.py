"""Recall latency while the engine ingests at full speed, against hnswlib alone.

Engine: W workers; a producer thread in this process streams vectors as fast
as the engine accepts them (resubmitting rejected suffixes) into ``--spaces``
spaces while the main thread runs ``recall(space, q, k)`` back to back for
``--seconds``. Peer, same run: one hnswlib index holding as many vectors as the
engine's largest shard of that space, queried directly with the same k and ef
(no ingest, no IPC): the floor for one query. Reports p50/p99 of both and
their ratio.

Each ``--slices`` value (``--query-slice-ms`` of the engine) is measured
``--repeats`` times in one run, alternating, and also reports the insert
rate over the measured window (what shorter slices cost ingest).

Usage: python bench/recall_latency.py [--workers W] [--dim 128] [--seconds 10] [--slices 5,1]
Writes bench/results/recall_latency-<hostname>-w<W>.json (or --out).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402


def measure(args, slice_ms: float, pool: np.ndarray, queries: np.ndarray) -> dict:
    """One engine with ``--query-slice-ms slice_ms``: recall latency while a
    producer streams at full speed, and the insert rate over the measured window."""
    n_pool = len(pool)
    lat: list[float] = []
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as workdir:
        run = ingest.EngineRun(args.workers, args.dim, n_pool, 1000, workdir, (f"--query-slice-ms={slice_ms}",))
        try:
            run.start()
            eng = run.eng
            names = [f"recall-{i}" for i in range(args.spaces)]
            stop = threading.Event()

            def produce():
                i = 0
                while not stop.is_set() and i < n_pool:
                    done, hi = i, min(n_pool, i + 500)
                    while done < hi and not stop.is_set():
                        done += eng.observe(names[(i // 500) % args.spaces], np.arange(done, hi),
                                            pool[done:hi]).accepted
                        if done < hi:
                            time.sleep(0.001)
                    i = hi
            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            time.sleep(1.0)  # let ingest reach full speed before measuring
            before = int(eng.inst.shard_counts.sum())
            t_start = time.monotonic()
            t_end = t_start + args.seconds
            j = 0
            gap = 1.0 / args.qps if args.qps > 0 else 0.0
            next_at = time.monotonic()
            while time.monotonic() < t_end:
                # Paced (--qps): the same query load whatever the answer time,
                # so the insert rates of two settings are comparable.
                wait = next_at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                next_at += gap
                t0 = time.perf_counter()
                eng.recall(names[0], queries[j % len(queries)], k=args.k)
                lat.append(time.perf_counter() - t0)
                j += 1
            window = time.monotonic() - t_start
            inserted = int(eng.inst.shard_counts.sum()) - before
            stop.set()
            producer.join(10)
            idx = eng.spaces.lookup(names[0])
            largest = int(eng.inst.shard_counts[:, idx].max())
        finally:
            run.teardown()
    p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
    return {"query_slice_ms": slice_ms, "p50_s": p50, "p99_s": p99, "queries": len(lat),
            "inserted_per_s": inserted / window, "largest_shard": largest}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--spaces", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--slices", default="5,1", help="--query-slice-ms values to compare, in one run "
                   "(5: the fixed 5 ms slices the engine had before the setting)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--qps", type=float, default=100.0, help="recall queries per second during ingest "
                   "(0: back to back)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(5)
    pool = rng.standard_normal((200_000, args.dim)).astype(np.float32)
    queries = rng.standard_normal((256, args.dim)).astype(np.float32)
    slices = [float(x) for x in args.slices.split(",")]
    runs: dict[float, list[dict]] = {s: [] for s in slices}
    for r in range(args.repeats):
        for s in (slices if r % 2 == 0 else slices[::-1]):  # alternate the order: no position bias
            runs[s].append(measure(args, s, pool, queries))
            m = runs[s][-1]
            print(f"  repeat {r + 1}/{args.repeats} slice {s:g} ms: p50 {m['p50_s'] * 1000:.2f} ms  "
                  f"p99 {m['p99_s'] * 1000:.2f} ms  inserting {m['inserted_per_s']:,.0f}/s")
    summary = {}
    for s, ms in runs.items():
        summary[str(s)] = {k: float(np.median([m[k] for m in ms])) for k in ("p50_s", "p99_s", "inserted_per_s")}
    largest = max(m["largest_shard"] for ms in runs.values() for m in ms)
    index = hnswlib.Index(space="cosine", dim=args.dim)
    index.init_index(max_elements=largest, M=16, ef_construction=200)
    index.set_num_threads(args.workers)
    index.add_items(pool[:largest], np.arange(largest))
    index.set_num_threads(1)
    index.set_ef(64)
    peer = []
    for j in range(2000):
        t0 = time.perf_counter()
        index.knn_query(queries[j % len(queries)], k=args.k, num_threads=1)
        peer.append(time.perf_counter() - t0)
    p50, p99 = (float(x) for x in np.percentile(peer, [50, 99]))
    for s, m in summary.items():
        print(f"engine, --query-slice-ms {float(s):g}, under full ingest: p50 {m['p50_s'] * 1000:.2f} ms  "
              f"p99 {m['p99_s'] * 1000:.2f} ms  inserting {m['inserted_per_s']:,.0f}/s  "
              f"(p99 {m['p99_s'] / p99:.1f}x hnswlib)")
    print(f"hnswlib knn_query alone on {largest} vectors: p50 {p50 * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms")
    if len(slices) == 2:
        a, b = summary[str(slices[0])], summary[str(slices[1])]
        print(f"slice {slices[1]:g} vs {slices[0]:g} ms: p99 x{b['p99_s'] / a['p99_s']:.2f}, "
              f"insert rate x{b['inserted_per_s'] / a['inserted_per_s']:.3f}")
    result = {"benchmark": "recall_latency", "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(), "parameters": vars(args),
              "engine": summary, "runs": {str(s): ms for s, ms in runs.items()},
              "hnswlib": {"p50_s": p50, "p99_s": p99, "vectors": largest}}
    ingest.write_result(result, "recall_latency", args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
