"""End-to-end ingest throughput: the engine against hnswlib peers.

For W workers and each dimension, on the same pre-generated vectors
(float32 standard normal, fixed seed), M=16, ef_construction=200, cosine:

* **engine** — a real instance (``python -m engine run`` in its own session,
  W pinned workers). A producer in this process calls ``observe`` in batches
  of ``--batch``, round-robin over ``--spaces`` spaces (so routing spreads
  the load), and resubmits any rejected suffix. Timed from the first
  ``observe`` to the moment the shard counts in shared memory add up to N.
* **(a)** — W forked processes, process i pinned to the CPU of engine slot i,
  each inserting N/W vectors into ONE hnswlib index (``num_threads=1``, in
  batches of ``--batch``). Released by a barrier; timed in the parent until
  the last one reports done.
* **(a_s)** — as (a), but each process spreads its batches round-robin over
  ceil(spaces/W) indexes: the graphs the engine builds when routing is even.
  HNSW insert cost grows with graph size, so (a_s) — not (a) — is the
  like-for-like ceiling for the engine (bench/README.md).
* **(b)** — one hnswlib index in this process, ``add_items(all,
  num_threads=W)``.

Throughput = N / time; with ``--repeats`` > 1 the median time is used and the
order of the four rotates each repeat. Each measurement also records the CPU
time other processes took on the host inside its window ("other load"). The
engine run records where its time went (producer enqueue time, per-slot
inserted vs home-routed counts, shards, worker CPU seconds, last insert of
each slot, idle share) and checks, after the clock stops, that all N vectors
are there and that sampled vectors find themselves.

Usage: python bench/ingest.py [--workers W] [--dims 128,768] [--repeats 1]
Writes bench/results/ingest-<hostname>-w<W>.json (or --out). See bench/README.md.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process, before numpy loads (as engine/cli/main.py):
# the engine workers, peer (a) and peer (b) must all get one core per thread.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine.producer.routing import home_slot  # noqa: E402
from tests.harness import EngineExited, EngineProcess  # noqa: E402

M = 16
EF_CONSTRUCTION = 200
METRIC = "cosine"
SEED = 20240611
DEFAULT_N = {128: 60_000, 768: 20_000}  # ~5-15 s per measurement on 2 cores
POLL_S = 0.010       # completion poll of the shard counts
BACKOFF_S = 0.001    # producer back-off after a rejected suffix
# Pressure at which normal-priority observations start being refused
# (engine/control/admission.py). The normal lane is sized so the whole data set fits
# below it: this bench measures insert throughput, not backpressure.
OVERLOADED_AT = 0.95
# Targets: engine/(a) >= 0.85 at 2 workers; >= 0.9 and ahead of (b) at 16.
NOISY = 0.05  # other processes used more than this share of the host during a measurement
TARGETS = {2: {"engine/a": 0.85}, 16: {"engine/a": 0.90, "engine/b": 1.0}}


class BenchError(Exception):
    pass


def _interrupt(signum, frame):
    # Bench script, not engine code: turn SIGTERM into the Ctrl-C path so
    # every ``finally`` below tears its processes and shared memory down.
    raise KeyboardInterrupt


# -- environment ---------------------------------------------------------------
def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))



def write_result(result: dict, bench: str, workers: int, out: str | None = None) -> str:
    """Write a bench's JSON to ``out`` or bench/results/<bench>-<host>-w<W>.json."""
    path = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                               f"{bench}-{socket.gethostname()}-w{workers}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {path}")
    return path

def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu_model": model or platform.processor(),
        "usable_cpus": usable_cpus(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "hnswlib": _version("hnswlib"),
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def loadavg() -> str:
    """``/proc/loadavg`` as the kernel writes it (1/5/15-minute load, runnable/total
    tasks, last pid), for the results JSON before and after a measurement."""
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def host_busy_s() -> float:
    """CPU seconds the whole host spent non-idle so far (all CPUs); the
    difference over a measurement, against W x seconds, shows other load."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def make_data(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + dim)
    return rng.standard_normal((n, dim), dtype=np.float32), np.arange(n, dtype=np.uint64)


# -- engine ----------------------------------------------------------------------
class EngineRun:
    """One real instance (tests/harness.py): start, wait until every worker runs, always tear down."""

    def __init__(self, workers: int, dim: int, n: int, batch: int, workdir: str,
                 extra: tuple[str, ...] = ()):
        self.capacity_normal = max(n + 1000, math.ceil(n / (OVERLOADED_AT - 0.1)) + batch)
        self.instance = EngineProcess(
            workdir, defaults=None, prefix="bench", extra_args=extra, log_tail=5000,
            workers=workers, dim=dim, metric=METRIC, hnsw_m=M, ef_construction=EF_CONSTRUCTION,
            capacity_normal=self.capacity_normal, capacity_high=16 * workers, capacity_low=16 * workers,
            metrics_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0", log_level="warning")
        self.name = self.instance.name
        self.eng = None

    def start(self, timeout: float = 60.0) -> None:
        try:
            self.instance.start(wait=False)
            self.instance.wait_ready(timeout, workers=True)
        except AssertionError as exc:  # exited, or not ready in time: the message carries the log
            raise BenchError(str(exc)) from None
        self.eng = self.instance.engine()

    def check_alive(self) -> None:
        try:
            self.instance.check_alive()
        except EngineExited as exc:
            raise BenchError(str(exc)) from None

    def log(self) -> str:
        return self.instance.log()

    def teardown(self, grace_s: float = 30.0) -> None:
        """SIGTERM (the engine drains its rings), SIGKILL after ``grace_s``."""
        self.eng = None
        self.instance.disconnect()
        self.instance.terminate(grace_s)
        left = self.instance.cleanup()
        shutil.rmtree(self.instance.data_dir, ignore_errors=True)
        if left:
            print(f"warning: shared memory of {self.name} left behind", file=sys.stderr)


def _cpu_seconds(pids: list[int]) -> list[float | None]:
    """CPU seconds of each process: /proc/<pid>/schedstat (nanoseconds on
    CPU) where the kernel has it, else psutil (clock-tick resolution)."""
    out: list[float | None] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                out.append(int(fh.read().split()[0]) / 1e9)
            continue
        except (OSError, ValueError, IndexError, TypeError):
            pass
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except (psutil.Error, TypeError):
            out.append(None)
    return out


def space_names(spaces: int, workers: int, routing: str) -> list[str]:
    """``hash``: bench-0000, bench-0001, ... wherever their hash sends them.
    ``balanced``: names picked so each slot is home to spaces/W of them (the
    same partition peer (a_s) gets), which takes routing luck out of the run."""
    if routing == "hash":
        return [f"bench-{i:04d}" for i in range(spaces)]
    quota = [spaces // workers + (1 if s < spaces % workers else 0) for s in range(workers)]
    per_slot: list[list[str]] = [[] for _ in range(workers)]
    i = 0
    while sum(quota):
        name = f"bench-{i:06d}"
        slot = home_slot(name, workers)
        if quota[slot] > 0:
            quota[slot] -= 1
            per_slot[slot].append(name)
        i += 1
    # Interleave the slots so consecutive batches go to different workers.
    return [group[k] for k in range(max(map(len, per_slot))) for group in per_slot if k < len(group)]


def measure_engine(vecs: np.ndarray, ids: np.ndarray, workers: int, spaces: int, batch: int,
                   workdir: str, timeout: float, routing: str = "hash", extra: tuple[str, ...] = ()) -> dict:
    n, dim = vecs.shape
    run = EngineRun(workers, dim, n, batch, workdir, extra)
    try:
        run.start()
        eng = run.eng
        names = space_names(spaces, workers, routing)
        chunks = [(lo, min(n, lo + batch)) for lo in range(0, n, batch)]
        home = np.zeros(workers, np.int64)
        for j, (lo, hi) in enumerate(chunks):
            home[home_slot(names[j % spaces], workers)] += hi - lo
        st = eng.status()
        pids = [w["pid"] for w in st["workers"]]
        ours = pids + [st["pid"], os.getpid()]  # workers, supervisor, this producer
        counts = eng.inst.shard_counts
        cpu0 = _cpu_seconds(ours)
        calls = rejected = 0
        h0, t0 = host_busy_s(), time.perf_counter()
        for j, (lo, hi) in enumerate(chunks):
            space, done = names[j % spaces], lo
            while done < hi:
                ack = eng.observe(space, ids[done:hi], vecs[done:hi])
                calls += 1
                done += ack.accepted
                if done < hi:
                    rejected += hi - done
                    time.sleep(BACKOFF_S)
        t_enqueued = time.perf_counter() - t0
        deadline = t0 + timeout
        per_slot = counts.sum(axis=1)
        last_change = [0.0] * workers
        while True:
            now = time.perf_counter()
            cur = counts.sum(axis=1)
            for s in range(workers):
                if cur[s] != per_slot[s]:
                    last_change[s] = now - t0
            per_slot = cur
            total = int(cur.sum())
            if total >= n:
                elapsed = now - t0
                break
            if now > deadline:
                raise BenchError(f"engine inserted {total}/{n} after {timeout:.0f}s")
            run.check_alive()
            time.sleep(POLL_S)
        cpu1, h1 = _cpu_seconds(ours), host_busy_s()
        if total != n:
            raise BenchError(f"engine holds {total} vectors, {n} were sent: not a valid run")
        hit = self_hits(eng, vecs, ids, names, batch)
        shard_sizes = counts[counts > 0]
        restarts = sum(w["restarts"] for w in eng.status()["workers"])
        busy = [None if a is None or b is None else round(b - a, 4) for a, b in zip(cpu0, cpu1)]
        return {
            "seconds": elapsed,
            "throughput": n / elapsed,
            "own_cpu_s": sum(b for b in busy if b is not None),
            "host_busy_s": h1 - h0,
            "capacity_normal": run.capacity_normal,
            "producer_enqueue_s": round(t_enqueued, 4),
            "observe_calls": calls,
            "rejected_resubmitted": rejected,
            "worker_restarts": restarts,
            "self_hit_ratio": hit,
            # Wall time the workers were not inserting, had the work been spread
            # perfectly: 1 - mean worker CPU / wall (start-up + tail imbalance).
            "worker_idle_share": None if None in busy[:workers] else
            round(1 - sum(busy[:workers]) / workers / elapsed, 4),
            "producer_cpu_s": busy[-1],
            "supervisor_cpu_s": busy[-2],
            "shards": int(len(shard_sizes)),
            "shard_size_min_mean_max": [int(shard_sizes.min()), round(float(shard_sizes.mean()), 1),
                                        int(shard_sizes.max())],
            "slots": [{"slot": s, "cpu": st["workers"][s]["cpus"], "inserted": int(per_slot[s]),
                       "home_routed": int(home[s]), "shards": int((counts[s] > 0).sum()),
                       "cpu_s": busy[s],
                       "busy_ratio": None if busy[s] is None else round(busy[s] / elapsed, 3),
                       "last_insert_at_s": round(last_change[s], 3)}
                      for s in range(workers)],
        }
    finally:
        run.teardown()


def self_hits(eng, vecs: np.ndarray, ids: np.ndarray, names: list[str], batch: int,
              samples: int = 32) -> float:
    """Sanity check after the clock stops: a sample of vectors must find
    themselves (top-1) in their space, so a broken build cannot pass as fast."""
    rows = np.random.default_rng(SEED).choice(len(ids), size=min(samples, len(ids)), replace=False)
    hits = 0
    for i in rows:
        res = eng.recall(names[(int(i) // batch) % len(names)], vecs[i], k=1)
        hits += int(res.ids.shape[1] > 0 and int(res.ids[0, 0]) == int(ids[i]))
    return hits / len(rows)


# -- peer (a): W pinned processes, their own indexes ----------------------------------
def _peer_a_child(cpu: int, vecs: np.ndarray, ids: np.ndarray, batch: int, indexes: int,
                  barrier, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's _interrupt
    os.sched_setaffinity(0, {cpu})
    # Batch j goes to index j % indexes, as the producer spreads batches
    # round-robin over spaces; each index is sized for exactly what it gets.
    starts = list(range(0, len(ids), batch))
    sizes = [sum(min(batch, len(ids) - lo) for lo in starts[k::indexes]) for k in range(indexes)]
    index = []
    for size in sizes:
        ix = hnswlib.Index(space=METRIC, dim=vecs.shape[1])
        ix.init_index(max_elements=max(1, size), M=M, ef_construction=EF_CONSTRUCTION)
        ix.set_num_threads(1)
        index.append(ix)
    barrier.wait(60)
    t0, c0 = time.perf_counter(), time.process_time()
    for j, lo in enumerate(starts):
        index[j % indexes].add_items(vecs[lo:lo + batch], ids[lo:lo + batch], num_threads=1)
    conn.send((time.perf_counter() - t0, time.process_time() - c0))
    conn.close()


def measure_peer_a(vecs: np.ndarray, ids: np.ndarray, workers: int, batch: int, timeout: float,
                   indexes: int = 1) -> dict:
    # fork: children see the parent's arrays copy-on-write (no pickling, no copy).
    ctx = multiprocessing.get_context("fork")
    cpus = usable_cpus()
    shares = np.array_split(np.arange(len(ids)), workers)
    barrier = ctx.Barrier(workers + 1)
    procs, conns = [], []
    try:
        for i, share in enumerate(shares):
            lo, hi = (int(share[0]), int(share[-1]) + 1) if len(share) else (0, 0)
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_peer_a_child, args=(cpus[i % len(cpus)], vecs[lo:hi], ids[lo:hi],
                                                         batch, indexes, barrier, send), daemon=True)
            p.start()
            send.close()
            procs.append(p)
            conns.append(recv)
        barrier.wait(60)
        h0, t0 = host_busy_s(), time.perf_counter()
        own = []
        for c in conns:
            if not c.poll(max(0.0, t0 + timeout - time.perf_counter())):
                raise BenchError(f"peer (a) did not finish within {timeout:.0f}s")
            own.append(c.recv())
        elapsed = time.perf_counter() - t0
        return {"seconds": elapsed, "throughput": len(ids) / elapsed, "indexes_per_process": indexes,
                "own_cpu_s": sum(x[1] for x in own), "host_busy_s": host_busy_s() - h0,
                "per_process_s": [round(x[0], 3) for x in own]}
    finally:
        for p in procs:  # normally already exiting: give them a moment first
            p.join(5)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
        for c in conns:
            c.close()


# -- peer (b): one index, W hnswlib threads ------------------------------------------
def measure_peer_b(vecs: np.ndarray, ids: np.ndarray, workers: int) -> dict:
    index = hnswlib.Index(space=METRIC, dim=vecs.shape[1])
    index.init_index(max_elements=len(ids), M=M, ef_construction=EF_CONSTRUCTION)
    h0, t0, c0 = host_busy_s(), time.perf_counter(), time.process_time()
    index.add_items(vecs, ids, num_threads=workers)
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "throughput": len(ids) / elapsed, "own_cpu_s": time.process_time() - c0,
            "host_busy_s": host_busy_s() - h0}


# -- reporting ---------------------------------------------------------------------
def median_result(runs: list[dict]) -> dict:
    """The run with the median time (lower median for an even count)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    pick = dict(ordered[(len(ordered) - 1) // 2])
    pick["median_seconds"] = statistics.median(r["seconds"] for r in runs)
    pick["throughput"] = pick["n"] / pick["median_seconds"]
    pick["all_seconds"] = [round(r["seconds"], 4) for r in runs]
    return pick


def targets_for(workers: int) -> tuple[int, dict]:
    at = 2 if workers < 16 else 16
    return at, TARGETS[at]


RATIOS = (("engine/a", "engine", "a"), ("engine/a_s", "engine", "a_s"), ("engine/b", "engine", "b"),
          ("a/b", "a", "b"), ("a_s/a", "a_s", "a"),
          # Metrics recording on versus off (--no-metrics), same vectors, same run.
          ("engine/engine_nm", "engine", "engine_nm"))
CONTENDERS = ("engine", "engine_nm", "a", "a_s", "b")


def render(dim: int, n: int, res: dict, ratios: dict, workers: int, cpus: int, args) -> str:
    at, targets = targets_for(workers)
    per = res["a_s"]["indexes_per_process"]
    lines = [f"dim {dim}  N={n}  workers={workers}  spaces={args.spaces} ({args.routing})  "
             f"batch={args.batch}  M={M} ef_construction={EF_CONSTRUCTION} {METRIC}  repeats={args.repeats}",
             f"  {'':<40}{'vectors/s':>11}{'seconds':>9}   other load on host"]
    labels = {"engine": f"engine ({args.spaces} spaces)",
              "engine_nm": "engine, --no-metrics",
              "a": f"(a)   {workers} pinned procs x 1 index",
              "a_s": f"(a_s) {workers} pinned procs x {per} indexes",
              "b": f"(b)   1 index, {workers} threads"}
    for key, label in labels.items():
        r = res[key]
        other = r["other_cpu_s"] / (cpus * r["seconds"])
        flag = "  NOISY" if other > NOISY else ""
        lines.append(f"  {label:<40}{r['throughput']:>11,.0f}{r['median_seconds']:>9.2f}"
                     f"   {r['other_cpu_s']:.1f} cpu-s ({other:.0%}){flag}")
    for key, _, _ in RATIOS:
        note = ""
        t = 0.99 if key == "engine/engine_nm" else targets.get("engine/a" if key == "engine/a_s" else key)
        if t is not None:
            ok = ratios[key] > t if key == "engine/b" else ratios[key] >= t
            where = "" if key == "engine/engine_nm" else f" (at {at} workers)"
            note = (f"   target {'>' if key == 'engine/b' else '>='} {t:.2f}{where}: "
                    f"{'met' if ok else 'NOT met'}")
        lines.append(f"  {key:<12}{ratios[key]:>7.3f}{note}")
    e = res["engine"]
    lines.append(f"  engine: producer enqueue {e['producer_enqueue_s']:.2f}s ({e['observe_calls']} observe "
                 f"calls, {e['rejected_resubmitted']} resubmitted), producer cpu {e['producer_cpu_s']}s, "
                 f"supervisor cpu {e['supervisor_cpu_s']}s, restarts {e['worker_restarts']}, "
                 f"self-hit {e['self_hit_ratio']:.0%}; workers idle {e['worker_idle_share']:.1%} of wall; "
                 f"{e['shards']} shards, size min/mean/max {e['shard_size_min_mean_max']}")
    for s in e["slots"]:
        lines.append(f"    slot {s['slot']} cpu {s['cpu']}: inserted {s['inserted']:>7} "
                     f"(home-routed {s['home_routed']:>7}) in {s['shards']} shards, busy {s['cpu_s']}s "
                     f"= {s['busy_ratio']} of wall, last insert at {s['last_insert_at_s']:.2f}s")
    lines.append(f"  (a) per-process seconds {res['a']['per_process_s']}, "
                 f"(a_s) {res['a_s']['per_process_s']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=len(usable_cpus()),
                   help="workers W (default: usable CPUs, %(default)s here)")
    p.add_argument("--dims", default="128,768", help="comma-separated dimensions (default %(default)s)")
    p.add_argument("--n", type=int, default=None, help="vectors per dimension (overrides the defaults)")
    p.add_argument("--n-128", type=int, default=None, help=f"vectors at 128-d (default {DEFAULT_N[128]})")
    p.add_argument("--n-768", type=int, default=None, help=f"vectors at 768-d (default {DEFAULT_N[768]})")
    p.add_argument("--spaces", type=int, default=None, help="memory spaces (default 4 x workers)")
    p.add_argument("--batch", type=int, default=1000, help="observe / add_items batch (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement; median reported")
    p.add_argument("--routing", choices=("hash", "balanced"), default="hash",
                   help="space names as they come (hash) or chosen so every worker is home to the "
                        "same number of spaces (balanced); default %(default)s")
    p.add_argument("--engine-arg", action="append", default=[], metavar="FLAG",
                   help="extra flag for `engine run`, repeatable, e.g. --engine-arg=--steal-threshold=100")
    p.add_argument("--order", default=",".join(CONTENDERS),
                   help="order of the measurements in the first repeat; later repeats rotate it "
                        "(default %(default)s)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement before giving up")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/ingest-<host>-w<W>.json)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.batch < 1 or args.repeats < 1:
        p.error("--workers, --batch and --repeats must be >= 1")
    args.spaces = args.spaces or 4 * args.workers
    if args.spaces < 1:
        p.error("--spaces must be >= 1")
    args.order = [k.strip() for k in args.order.split(",") if k.strip()]
    if sorted(args.order) != sorted(CONTENDERS):
        p.error(f"--order must name {', '.join(CONTENDERS)} once each, got {args.order}")
    try:
        args.dims = [int(d) for d in args.dims.split(",") if d.strip()]
    except ValueError:
        p.error(f"--dims={args.dims!r}: expected integers like 128,768")
    return args


def n_for(dim: int, args) -> int:
    explicit = {128: args.n_128, 768: args.n_768}.get(dim)
    if explicit:
        return explicit
    if args.n:
        return args.n
    return DEFAULT_N.get(dim, max(1000, int(DEFAULT_N[128] * 128 / dim)))


def measure_dim(dim: int, n: int, args, cpus: list[int], workdir: str) -> dict:
    w = args.workers
    print(f"\n== dim {dim}: N={n}, generating data (seed {SEED + dim}) ...", flush=True)
    vecs, ids = make_data(n, dim)
    per = max(1, math.ceil(args.spaces / w))
    plan = {"engine": lambda: measure_engine(vecs, ids, w, args.spaces, args.batch, workdir, args.timeout,
                                             args.routing, tuple(args.engine_arg)),
            "engine_nm": lambda: measure_engine(vecs, ids, w, args.spaces, args.batch, workdir, args.timeout,
                                                args.routing, tuple(args.engine_arg) + ("--no-metrics",)),
            "a": lambda: measure_peer_a(vecs, ids, w, args.batch, args.timeout),
            "a_s": lambda: measure_peer_a(vecs, ids, w, args.batch, args.timeout, indexes=per),
            "b": lambda: measure_peer_b(vecs, ids, w)}
    runs: dict[str, list[dict]] = {key: [] for key in plan}
    for r in range(args.repeats):
        # Rotate the order each repeat: on a VM a sustained run can slow the
        # next one (clock boost, neighbours), so no contender always goes first.
        order = args.order[r % len(args.order):] + args.order[:r % len(args.order)]
        for key in order:
            fn = plan[key]
            load0 = os.getloadavg()[0]
            res = fn()
            res.update(n=n, loadavg_1m_before=load0, position=order.index(key))
            # CPU time other processes took on this host inside the timed window.
            res["other_cpu_s"] = round(max(0.0, res["host_busy_s"] - res["own_cpu_s"]), 3)
            runs[key].append(res)
            print(f"   repeat {r + 1}/{args.repeats} {key:<6} {res['seconds']:7.2f}s "
                  f"{n / res['seconds']:>10,.0f} vectors/s   other load {res['other_cpu_s']:.1f} cpu-s",
                  flush=True)
    res = {k: median_result(v) for k, v in runs.items()}
    ratios = {key: res[num]["throughput"] / res[den]["throughput"] for key, num, den in RATIOS}
    print(render(dim, n, res, ratios, w, len(cpus), args), flush=True)
    return {"n": n, "engine": res["engine"], "engine_no_metrics": res["engine_nm"],
            "peer_a": res["a"], "peer_a_sharded": res["a_s"],
            "peer_b": res["b"], "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    w = args.workers
    info = machine_info()
    cpus = usable_cpus()
    print(f"{info['hostname']}: {info['cpu_model']}, usable CPUs {cpus}; python {info['python']}, "
          f"numpy {info['numpy']}, hnswlib {info['hnswlib']}")
    if w > len(cpus):
        print(f"note: {w} workers on {len(cpus)} usable CPUs: workers share cores", file=sys.stderr)
    out_path = args.out or os.path.join(ROOT, "bench", "results", f"ingest-{info['hostname']}-w{w}.json")
    record = {"benchmark": "ingest", "machine": info,
              "command": shlex.join([sys.executable] + sys.argv), "argv": sys.argv,
              "parameters": {"workers": w, "dims": args.dims, "spaces": args.spaces, "routing": args.routing,
                             "engine_args": args.engine_arg, "batch": args.batch,
                             "repeats": args.repeats, "order": args.order, "M": M,
                             "ef_construction": EF_CONSTRUCTION,
                             "metric": METRIC, "seed": SEED, "data": "float32 standard normal",
                             "a_s_indexes_per_process": max(1, math.ceil(args.spaces / w))},
              "targets": {str(k): v for k, v in TARGETS.items()}, "results": {}}
    workdir = tempfile.mkdtemp(prefix="engram-bench-ingest-")
    try:
        for dim in args.dims:
            record["results"][str(dim)] = measure_dim(dim, n_for(dim, args), args, cpus, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted: instance and peers torn down", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench/ingest.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    print(f"\nwrote {os.path.relpath(out_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
