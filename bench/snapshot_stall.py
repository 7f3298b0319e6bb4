"""Does a snapshot stall ingestion? Observation latency without and with one in progress.

Setup, one run: a real instance's shared memory (rings, control block,
metric array) created in this process, ONE ``Worker`` of slot 0 driven
in-process with its real ``SlotStore`` (log, fork-based ``Snapshotter``),
pinned to the first usable CPU; a producer process pinned to the second CPU
calls ``Engine.observe`` at a fixed ``--rate`` in batches of ``--batch``.
The slot's shard is first built to ``--n`` vectors (``--dim``, M
``--hnsw-m``, ``--ef-construction``; inserted directly, with 2 threads, to
save time: the log then holds only the measured phase, the snapshot covers
the whole shard either way).

Why in-process and not ``python -m engine run``: latency is taken from the
very values the worker records into ``observation_latency_seconds``
(inserted − enqueued, per observation), captured at full resolution by a
writer that also keeps them; the exported histogram's buckets (5 ms, 10 ms,
50 ms, …) cannot resolve a 2× change of a ~10 ms P99. The code path is the
engine's: same ``Worker.step``, same rings, same fork of the worker process.

Phases (each sample is tagged by when its batch finished): warm-up; a
``--window`` s baseline; ``--snapshots`` snapshots, each started with
``Snapshotter.start`` (rotate + fork) and tagged "snapshot" until the child
is reaped, with a 1 s gap between them; a second baseline window. Reported:
P50/P99/max of each, P99 ratio snapshot/baseline (target ≤ 2), snapshot
durations, the parent's time inside ``start`` (log rotation + fork).

Usage: python bench/snapshot_stall.py [--n 200000] [--dim 32] [--rate 1500]
Writes bench/results/snapshot_stall-<hostname>-w1.json (or --out).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ingest import machine_info, write_result  # noqa: E402

from engine import config  # noqa: E402
from engine.control.records import PRODUCER, RUNNING, WORKER  # noqa: E402
from engine.control.instance import Instance
from engine.supervisor.preflight import instance_params  # noqa: E402
from engine.worker.shards import ShardSet  # noqa: E402
from engine.worker.loop import Worker  # noqa: E402
from metrics.writer import MetricWriter  # noqa: E402
from shm.lock import InstanceLock
from shm.segment import remove_instance_objects  # noqa: E402

SPACE = "bench"
WARMUP_S = 2.0
GAP_S = 1.0


class KeepingWriter(MetricWriter):
    """Records like the worker's writer, and keeps each latency batch with its time."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.samples: list[tuple[float, np.ndarray]] = []

    def observe_many(self, name, values, **labels):
        if name == "observation_latency_seconds":
            self.samples.append((time.monotonic(), np.array(values, dtype=np.float64)))
        return super().observe_many(name, values, **labels)


def make_instance(args, data_dir: str) -> Instance:
    ns = argparse.Namespace(config_file=None, **{s.attr: None for s in config.SETTINGS})
    ns.name = f"stall{os.getpid()}x{uuid.uuid4().hex[:6]}"
    ns.data_dir, ns.dim, ns.workers, ns.metric = data_dir, str(args.dim), "1", "cosine"
    ns.hnsw_m, ns.ef_construction, ns.ef_search = str(args.hnsw_m), str(args.ef_construction), "64"
    ns.capacity_normal, ns.capacity_high, ns.capacity_low = "100000", "16", "16"
    ns.snapshot_interval, ns.snapshot_wal_bytes, ns.fsync = "0", "0", args.fsync
    cfg = config.resolve(ns, "run", env={})
    inst = Instance.create(instance_params(cfg, 1, [None]))
    inst.header.sup_pid = os.getpid()  # this process stands in for the supervisor:
    inst_lock = InstanceLock(os.path.join(inst.params.data_dir, "LOCK"))  # its pid, its lock and its run id
    assert inst_lock.try_acquire(run_id=1)
    inst.header.run_id = 1  # the run id producers check the lock against
    inst.stand_in_lock = inst_lock  # held as long as the instance (the lock goes with its object)
    inst.sup(0).state = RUNNING
    return inst


def producer(name: str, cpu: int | None, rate: float, batch: int, dim: int, start_id: int, stop) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from engine.producer.api import Engine
    eng = Engine(Instance.attach(name, PRODUCER))
    rng = np.random.default_rng(7)
    next_id, t0, sent = start_id, time.monotonic(), 0
    while not stop.is_set():
        vecs = rng.standard_normal((batch, dim), dtype=np.float32)
        ack = eng.observe(SPACE, np.arange(next_id, next_id + batch), vecs)
        next_id += ack.accepted
        sent += batch
        time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    eng.close()


def quantiles(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"count": 0}
    return {"count": int(len(values)), "p50_ms": round(float(np.percentile(values, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(values, 99)) * 1e3, 3),
            "max_ms": round(float(values.max()) * 1e3, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--rate", type=float, default=1500.0, help="observations per second")
    ap.add_argument("--batch", type=int, default=50, help="observations per observe() call")
    ap.add_argument("--window", type=float, default=8.0, help="seconds of each baseline window")
    ap.add_argument("--snapshots", type=int, default=5)
    ap.add_argument("--fsync", default="interval")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    worker_cpu, producer_cpu = cpus[0], (cpus[1] if len(cpus) > 1 else None)
    workdir = tempfile.mkdtemp(prefix="snapshot-stall-")
    os.makedirs(os.path.join(workdir, "data"), mode=0o700)
    inst = make_instance(args, os.path.join(workdir, "data"))
    stop = multiprocessing.get_context("fork").Event()
    proc = worker = None
    try:
        os.sched_setaffinity(0, {worker_cpu})
        shards = ShardSet(args.dim, "cosine", args.hnsw_m, args.ef_construction, 64, 1024)
        worker = Worker(inst.as_role(WORKER, 0), 0, shards)
        worker.metrics = KeepingWriter(inst.metrics, inst.metrics.row_map.worker(0))
        worker.start(durable=True, snapshot_cpus=set(cpus))  # as engine.worker.loop.main: the CPUs before pinning
        space = worker.spaces.register(SPACE)
        print(f"building a shard of {args.n} vectors (dim {args.dim}, M {args.hnsw_m}, "
              f"ef_construction {args.ef_construction}) ...", flush=True)
        t = time.monotonic()
        rng = np.random.default_rng(1)
        os.sched_setaffinity(0, set(cpus))
        index = hnswlib.Index(space="cosine", dim=args.dim)
        index.init_index(max_elements=args.n + 1024, M=args.hnsw_m, ef_construction=args.ef_construction)
        for lo in range(0, args.n, 20000):
            k = min(20000, args.n - lo)
            index.add_items(rng.standard_normal((k, args.dim), dtype=np.float32), np.arange(lo, lo + k),
                            num_threads=len(cpus))
        worker.counts[space] = shards.adopt(space, index)
        os.sched_setaffinity(0, {worker_cpu})
        build_s = time.monotonic() - t
        print(f"built in {build_s:.0f}s; measuring", flush=True)

        proc = multiprocessing.get_context("fork").Process(
            target=producer, args=(inst.name, producer_cpu, args.rate, args.batch, args.dim, args.n, stop))
        proc.start()
        snap = worker.store.snapshots
        rotate_s: list[float] = []
        real_rotate = snap.wal.rotate

        def timed_rotate():  # to split the parent's time in start() into rotation and fork
            t = time.perf_counter()
            try:
                return real_rotate()
            finally:
                rotate_s.append(time.perf_counter() - t)
        snap.wal.rotate = timed_rotate
        phases: list[tuple[str, float, float]] = []  # (tag, start, end)
        starts, durations = [], []

        def run_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                worker.step()

        run_for(WARMUP_S)
        t0 = time.monotonic()
        run_for(args.window)
        phases.append(("baseline", t0, time.monotonic()))
        for _ in range(args.snapshots):
            t0 = time.monotonic()
            snap.appended(1)  # something to cover (the measured log is tiny)
            assert snap.start()
            starts.append(time.monotonic() - t0)
            while snap.child:
                worker.step()
            t1 = time.monotonic()
            phases.append(("snapshot", t0, t1))
            durations.append(t1 - t0)
            run_for(GAP_S)
        t0 = time.monotonic()
        run_for(args.window)
        phases.append(("baseline", t0, time.monotonic()))
        stop.set()
        proc.join(10)

        samples = worker.metrics.samples
        by_tag = {"baseline": [], "snapshot": []}
        for at, values in samples:
            for tag, lo, hi in phases:
                if lo <= at < hi:
                    by_tag[tag].append(values)
        base = np.concatenate(by_tag["baseline"]) if by_tag["baseline"] else np.zeros(0)
        during = np.concatenate(by_tag["snapshot"]) if by_tag["snapshot"] else np.zeros(0)
        qb, qs = quantiles(base), quantiles(during)
        ok_snaps = int(snap.failures == 0)
        result = {
            "bench": "snapshot_stall",
            "command": " ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv),
            "machine": machine_info(),
            "params": {**vars(args), "worker_cpu": worker_cpu, "producer_cpu": producer_cpu},
            "shard_vectors": int(shards.count(space)),
            "build_seconds": round(build_s, 1),
            "snapshot_bytes": snap.entries[-1].bytes if snap.entries else None,
            "snapshot_seconds": [round(d, 3) for d in durations],
            "parent_start_ms": [round(s * 1e3, 3) for s in starts],
            "parent_rotate_ms": [round(s * 1e3, 3) for s in rotate_s],
            "baseline": qb,
            "during_snapshot": qs,
            "p99_ratio": round(qs["p99_ms"] / qb["p99_ms"], 2) if qb.get("p99_ms") and qs.get("p99_ms") else None,
            "p50_ratio": round(qs["p50_ms"] / qb["p50_ms"], 2) if qb.get("p50_ms") and qs.get("p50_ms") else None,
            "target": "p99 during a snapshot <= 2 x baseline p99",
            "snapshots_failed": snap.failures,
            "all_snapshots_ok": bool(ok_snaps),
        }
        result["target_met"] = result["p99_ratio"] is not None and result["p99_ratio"] <= 2.0
        print(f"baseline  {qb}\nsnapshot  {qs}\np99 ratio {result['p99_ratio']} (target <= 2); "
              f"snapshots {result['snapshot_seconds']} s, parent start {result['parent_start_ms']} ms "
              f"(of which log rotation {result['parent_rotate_ms']} ms)")
        write_result(result, "snapshot_stall", 1, args.out)
        return 0
    finally:
        stop.set()
        if proc is not None and proc.is_alive():
            proc.kill()
        if worker is not None and worker.store is not None:
            worker.store.close()
        inst.close()
        remove_instance_objects(inst.name)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
