"""End-to-end price of metrics: the engine with recording on versus ``--no-metrics``.

Same vectors, same run, alternating on/off (on-off, off-on, ...) so drift on
the host hits both sides alike. Stealing makes every run's shard layout
different (and HNSW cost depends on graph sizes), which alone moves a run by
several per cent; this bench removes that noise by routing spaces evenly
(``--routing balanced`` of bench/ingest.py) and turning stealing off
(``--steal-threshold`` above N), so the two sides do identical work and only
the recording differs.

A second measurement takes process scheduling out as well: one worker loop
driven in this process (``engine.worker.loop.Worker`` over a real instance's shared
memory, fed through ``Engine.observe``) inserts the same vectors with a
``MetricWriter`` and with a ``NullWriter``; hnswlib seeds its level generator,
so both sides build identical graphs and only the recording differs.

Usage: python bench/metrics_e2e.py [--workers W] [--dim 128] [--n 40000] [--pairs 4]
Writes bench/results/metrics_e2e-<hostname>-w<W>.json (or --out).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402  (shares the engine runner and data of bench/ingest.py)


def in_process(dim: int, n: int, pairs: int) -> dict:
    """Worker-loop seconds for the same inserts with and without recording."""
    import argparse as _ap
    import uuid

    import numpy as np

    from engine import config
    from engine.control.instance import Instance
    from engine.control.records import WORKER
    from shm.lock import InstanceLock
    from engine.producer.api import Engine
    from engine.worker.shards import ShardSet
    from engine.supervisor.preflight import instance_params
    from engine.worker.loop import Worker
    from metrics.writer import NullWriter
    from shm.segment import remove_instance_objects

    name = "bench-" + uuid.uuid4().hex[:8]
    ns = _ap.Namespace(config_file=None, **{s.attr: None for s in config.SETTINGS})
    ns.name, ns.dim, ns.workers, ns.capacity_normal = name, str(dim), "1", str(n + 1000)
    data_dir = tempfile.mkdtemp(prefix="engram-bench-")
    ns.data_dir = data_dir
    cfg = config.resolve(ns, "run", env={})
    inst = Instance.create(instance_params(cfg, 1, [None]))
    inst.header.sup_pid = os.getpid()  # this process stands in for the supervisor:
    inst_lock = InstanceLock(os.path.join(inst.params.data_dir, "LOCK"))  # its pid, its lock and its run id
    assert inst_lock.try_acquire(run_id=1)
    inst.header.run_id = 1  # the run id producers check the lock against
    vecs = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    out: dict[str, list[float]] = {"on": [], "off": []}
    try:
        eng = Engine(inst)
        for r in range(pairs):
            for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                worker = Worker(inst.as_role(WORKER, 0), 0, ShardSet(dim, "cosine", 16, 200, 64, 1024))
                if side == "off":
                    worker.metrics = NullWriter()
                for lo in range(0, n, 1000):
                    eng.observe(f"space-{(lo // 1000) % 4}", np.arange(lo, min(n, lo + 1000)),
                                vecs[lo:lo + 1000])
                t0 = time.perf_counter()
                while (claim := worker.next_claim()) is not None:
                    worker.process(claim)
                out[side].append(time.perf_counter() - t0)
                print(f"in-process pair {r + 1}/{pairs} metrics {side:<3} {out[side][-1]:.3f}s", flush=True)
    finally:
        inst.close()
        remove_instance_objects(name)
    med = {side: statistics.median(v) for side, v in out.items()}
    return {"seconds": out, "median": med, "throughput_on_over_off": med["off"] / med["on"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--spaces", type=int, default=None, help="default 4 x workers")
    p.add_argument("--pairs", type=int, default=4, help="on/off pairs (default %(default)s)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    spaces = args.spaces or 4 * args.workers
    vecs, ids = ingest.make_data(args.n, args.dim)
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as workdir:
        for r in range(args.pairs):
            for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                extra = ("--steal-threshold", str(args.n * 10)) + (("--no-metrics",) if side == "off" else ())
                out = ingest.measure_engine(vecs, ids, args.workers, spaces, 1000, workdir, 900.0,
                                            "balanced", extra)
                worker_cpu = sum(s["cpu_s"] for s in out["slots"])
                runs[side].append({"seconds": out["seconds"], "worker_cpu_s": worker_cpu})
                print(f"pair {r + 1}/{args.pairs} metrics {side:<3} {out['seconds']:7.3f}s "
                      f"{args.n / out['seconds']:>9,.0f} vectors/s  worker cpu {worker_cpu:.2f}s", flush=True)
    med = {side: {"seconds": statistics.median(x["seconds"] for x in v),
                  "worker_cpu_s": statistics.median(x["worker_cpu_s"] for x in v)} for side, v in runs.items()}
    ratio = med["off"]["seconds"] / med["on"]["seconds"]  # throughput on / throughput off
    cpu_ratio = med["on"]["worker_cpu_s"] / med["off"]["worker_cpu_s"]
    spread = [x["seconds"] for v in runs.values() for x in v]
    print(f"\nthroughput with metrics / without: {ratio:.3f} (target >= 0.99); "
          f"worker CPU with / without: {cpu_ratio:.3f}; run-to-run spread "
          f"{(max(spread) - min(spread)) / statistics.median(spread):.1%}")
    local = in_process(args.dim, min(args.n, 20000), args.pairs)
    print(f"in-process worker loop, with metrics / without: {local['throughput_on_over_off']:.4f}")
    result = {"benchmark": "metrics_e2e", "in_process": local, "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(),
              "parameters": {"workers": args.workers, "dim": args.dim, "n": args.n, "spaces": spaces,
                             "pairs": args.pairs, "routing": "balanced", "stealing": "off"},
              "runs": runs, "median": med, "throughput_on_over_off": ratio,
              "worker_cpu_on_over_off": cpu_ratio}
    ingest.write_result(result, "metrics_e2e", args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
