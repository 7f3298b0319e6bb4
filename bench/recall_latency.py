"""Recall latency while the engine ingests at full speed, against hnswlib alone.

Engine: W workers; a producer thread in this process streams vectors as fast
as the engine accepts them (resubmitting rejected suffixes) into ``--spaces``
spaces while the main thread runs ``recall(space, q, k)`` at ``--qps`` (paced) for
``--seconds``. Peer, same run: one hnswlib index holding as many vectors as the
engine's largest shard of that space, queried directly with the same k and ef
(no ingest, no IPC): the floor for one query. Reports p50/p99 of both and
their ratio.

Each ``--slices`` value (``--query-slice-ms`` of the engine; ``S@B`` also
sets ``--batch-budget-ms B``) is measured ``--repeats`` times in one run,
alternating, and also reports the insert rate over the measured window (what
shorter slices cost ingest) and the share of the host other processes took
during the window ("other load"); a window above 5 % is measured again, up
to ``--retry-noisy`` times (the noisy ones stay in the JSON). Every recall
latency is kept in the JSON
(``lat_ms``), and a PNG next to it draws their CDF (log x) per setting,
pooled over the repeats, with the hnswlib floor.

Usage: python bench/recall_latency.py [--workers W] [--dim 128] [--seconds 10] [--slices 5,1.5,1.5@10]
Writes bench/results/recall_latency-<hostname>-w<W>.json (or --out) and a .png next to it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cdfplot  # noqa: E402
import ingest  # noqa: E402


def parse_setting(text: str) -> tuple[float, float | None]:
    """``S`` -> (S, None): --query-slice-ms S; ``S@B`` -> (S, B): also --batch-budget-ms B."""
    slice_ms, _, budget = text.partition("@")
    return float(slice_ms), float(budget) if budget else None


def setting_key(text: str) -> str:
    s, b = parse_setting(text)
    return str(s) if b is None else f"{s}@{b:g}"


def own_pids(run) -> list[int]:
    """This process and the engine instance's processes."""
    try:
        sup = psutil.Process(run.instance.proc.pid)
        return [os.getpid(), sup.pid] + [c.pid for c in sup.children(recursive=True)]
    except psutil.Error:
        return [os.getpid()]


def own_cpu_s(pids: list[int]) -> float:
    return sum(x for x in ingest._cpu_seconds(pids) if x is not None)


def measure(args, setting: str, pool: np.ndarray, queries: np.ndarray) -> dict:
    """One engine with ``--query-slice-ms`` (and ``--batch-budget-ms``) of
    ``setting``: recall latency while a producer streams at full speed, and
    the insert rate over the measured window."""
    n_pool = len(pool)
    lat: list[float] = []
    incomplete = 0
    slice_ms, budget_ms = parse_setting(setting)
    flags = (f"--query-slice-ms={slice_ms}",) + (() if budget_ms is None else (f"--batch-budget-ms={budget_ms}",))
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as workdir:
        run = ingest.EngineRun(args.workers, args.dim, n_pool, 1000, workdir, flags)
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
            pids = own_pids(run)
            cpu0, host0 = own_cpu_s(pids), ingest.host_busy_s()
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
                res = eng.recall(names[0], queries[j % len(queries)], k=args.k)
                lat.append(time.perf_counter() - t0)
                incomplete += not res.complete  # a shard missed the deadline (or its breaker is open)
                j += 1
            window = time.monotonic() - t_start
            inserted = int(eng.inst.shard_counts.sum()) - before
            other = (ingest.host_busy_s() - host0 - (own_cpu_s(pids) - cpu0)) / (len(ingest.usable_cpus()) * window)
            stop.set()
            producer.join(10)
            idx = eng.spaces.lookup(names[0])
            largest = int(eng.inst.shard_counts[:, idx].max())
        finally:
            # The producer left a backlog of up to the whole pool in the rings;
            # nothing here reads it, so do not wait for the drain.
            run.teardown(grace_s=1.0)
    p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
    return {"query_slice_ms": slice_ms, "batch_budget_ms": budget_ms, "p50_s": p50, "p99_s": p99,
            "queries": len(lat), "incomplete": incomplete, "other_load": round(other, 3), "inserted_per_s": inserted / window, "largest_shard": largest,
            "lat_ms": [round(x * 1e3, 3) for x in lat]}


def plot_cdf(result: dict, path: str) -> None:
    """CDF (log x) of every recall latency per setting, pooled over the
    repeats, and of hnswlib ``knn_query`` alone."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series = [(f"--query-slice-ms {k.replace('@', ' --batch-budget-ms ')}",
               [x for m in ms for x in m["lat_ms"]]) for k, ms in result["runs"].items()]
    series.append((f"hnswlib knn_query alone ({result['hnswlib']['vectors']} vectors)", result["hnswlib"]["lat_ms"]))
    for j, (label, lat) in enumerate(series):
        cdfplot.line(ax, lat, label, "C7" if label.startswith("hnswlib") else f"C{j}")
    p = result["parameters"]
    cdfplot.axes(ax, "recall latency, ms (log)",
                 f"recall under full ingest: {p['workers']} workers, {p['dim']}-d, {p['qps']:g} recalls/s, "
                 f"{p['repeats']} x {p['seconds']:g} s per setting")
    cdfplot.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--spaces", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--slices", default="5,1.5", help="--query-slice-ms values to compare, in one run "
                   "(5: the fixed 5 ms slices the engine had before the setting); S@B also sets "
                   "--batch-budget-ms B")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--qps", type=float, default=100.0, help="recall queries per second during ingest "
                   "(0: back to back)")
    p.add_argument("--retry-noisy", type=int, default=2, help="measure a setting again (at most this many "
                   "times) when other processes took more than 5%% of the host during its window")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, ingest._interrupt)  # SIGTERM tears the engine instance down too
    rng = np.random.default_rng(5)
    pool = rng.standard_normal((200_000, args.dim)).astype(np.float32)
    queries = rng.standard_normal((256, args.dim)).astype(np.float32)
    load0 = ingest.loadavg()
    slices = [setting_key(x) for x in args.slices.split(",")]
    runs: dict[str, list[dict]] = {s: [] for s in slices}
    noisy: dict[str, list[dict]] = {s: [] for s in slices}  # measured again, kept for the record
    for r in range(args.repeats):
        for s in (slices if r % 2 == 0 else slices[::-1]):  # alternate the order: no position bias
            for attempt in range(1 + args.retry_noisy):
                m = measure(args, s, pool, queries)
                m["repeat"], m["attempt"] = r, attempt
                if m["other_load"] <= ingest.NOISY or attempt == args.retry_noisy:
                    break
                noisy[s].append(m)
                print(f"  repeat {r + 1}/{args.repeats} setting {s}: other load {m['other_load']:.0%}, measuring again")
            runs[s].append(m)
            print(f"  repeat {r + 1}/{args.repeats} setting {s}: p50 {m['p50_s'] * 1000:.2f} ms  "
                  f"p99 {m['p99_s'] * 1000:.2f} ms  inserting {m['inserted_per_s']:,.0f}/s"
                  + f"  other load {m['other_load']:.0%}" + (" NOISY" if m["other_load"] > ingest.NOISY else "")
                  + (f"  INCOMPLETE {m['incomplete']}" if m["incomplete"] else ""))
    summary = {}
    for s, ms in runs.items():
        summary[s] = {}
        for k in ("p50_s", "p99_s", "inserted_per_s", "other_load"):  # median, and the spread over the repeats
            vals = [m[k] for m in ms]
            summary[s].update({k: float(np.median(vals)), f"{k}_min": min(vals), f"{k}_max": max(vals)})
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
    load1 = ingest.loadavg()
    p50, p99 = (float(x) for x in np.percentile(peer, [50, 99]))
    for s, m in summary.items():
        print(f"engine, setting {s}, under full ingest: p50 {m['p50_s'] * 1000:.2f} ms  "
              f"p99 {m['p99_s'] * 1000:.2f} ms  inserting {m['inserted_per_s']:,.0f}/s  "
              f"(p99 {m['p99_s'] / p99:.1f}x hnswlib)")
    print(f"hnswlib knn_query alone on {largest} vectors: p50 {p50 * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms")
    a = summary[slices[0]]
    for s in slices[1:]:
        b = summary[s]
        print(f"setting {s} vs {slices[0]}: p99 x{b['p99_s'] / a['p99_s']:.2f}, "
              f"insert rate x{b['inserted_per_s'] / a['inserted_per_s']:.3f}")
    result = {"benchmark": "recall_latency", "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(), "parameters": vars(args),
              "loadavg_before": load0, "loadavg_after": load1,
              "engine": summary, "runs": runs, "noisy_runs_measured_again": noisy,
              "hnswlib": {"p50_s": p50, "p99_s": p99, "vectors": largest,
                          "lat_ms": [round(x * 1e3, 3) for x in peer]}}
    path = ingest.write_result(result, "recall_latency", args.workers, args.out)
    plot_cdf(result, os.path.splitext(path)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
