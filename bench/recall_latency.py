"""Recall latency while the engine ingests at full speed, against hnswlib alone.

Engine: W workers; a producer thread in this process streams vectors as fast
as the engine accepts them (resubmitting rejected suffixes) into ``--spaces``
spaces while the main thread runs ``recall(space, q, k)`` back to back for
``--seconds``. Peer, same run: one hnswlib index holding as many vectors as the
engine's largest shard of that space, queried directly with the same k and ef
(no ingest, no IPC): the floor for one query. Reports p50/p99 of both and
their ratio.

Usage: python bench/recall_latency.py [--workers W] [--dim 128] [--seconds 10]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--spaces", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(5)
    n_pool = 200_000
    pool = rng.standard_normal((n_pool, args.dim)).astype(np.float32)
    queries = rng.standard_normal((256, args.dim)).astype(np.float32)
    lat: list[float] = []
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as workdir:
        run = ingest.EngineRun(args.workers, args.dim, n_pool, 1000, workdir, ())
        try:
            run.start()
            eng = run.eng
            names = [f"recall-{i}" for i in range(args.spaces)]
            stop = threading.Event()
            sent = [0]

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
                    sent[0] = i
            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            time.sleep(1.0)  # let ingest reach full speed before measuring
            t_end = time.monotonic() + args.seconds
            j = 0
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                eng.recall(names[0], queries[j % len(queries)], k=args.k)
                lat.append(time.perf_counter() - t0)
                j += 1
            stop.set()
            producer.join(10)
            idx = eng.spaces.lookup(names[0])
            largest = int(eng.inst.shard_counts[:, idx].max())
            inserted = int(eng.inst.shard_counts.sum())
        finally:
            run.teardown()
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
    e50, e99 = (float(x) for x in np.percentile(lat, [50, 99]))
    p50, p99 = (float(x) for x in np.percentile(peer, [50, 99]))
    print(f"engine recall under full ingest ({len(lat)} queries, {inserted} vectors inserted meanwhile): "
          f"p50 {e50 * 1000:.2f} ms  p99 {e99 * 1000:.2f} ms")
    print(f"hnswlib knn_query alone on {largest} vectors: p50 {p50 * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms")
    print(f"ratio engine/hnswlib: p50 {e50 / p50:.1f}x  p99 {e99 / p99:.1f}x")
    result = {"benchmark": "recall_latency", "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(), "parameters": vars(args),
              "engine": {"p50_s": e50, "p99_s": e99, "queries": len(lat), "inserted_during": inserted},
              "hnswlib": {"p50_s": p50, "p99_s": p99, "vectors": largest},
              "ratio_p50": e50 / p50, "ratio_p99": e99 / p99}
    ingest.write_result(result, "recall_latency", args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
