"""Forget and upsert: what forgets cost ingest, and what a compaction costs observation latency.

Two measurements on real instances (``python -m engine run`` through
``tests/harness.py``), each against a peer measured in the same run:

1. **Throughput** (``--parts mix``). Arm A: ``--ops`` observations of new
   ids. Arm B: the same number of operations, every ``--forget-every``-th
   batch (10: 10 %) a forget of ``--batch`` ids observed earlier, the other
   batches observations of new ids. Same engine settings (``--workers``,
   ``--dim``, cosine, the engine's defaults otherwise), same vectors, same
   ``--spaces`` spaces round-robin, batches of ``--batch``. Before the clock
   starts, every arm observes the same ``--prefix`` observations (so arm B has
   something to forget from its first forget on) and waits until they are
   committed. The producer keeps at most ``--lead`` records queued, as a
   pipeline held back by backpressure would; a forget takes random ids
   observed at least ``2 x --lead`` operations before it, so they are
   applied already (the bench checks it: ``forgets_of_unapplied``), never an
   observation still waiting in a ring (a forget that meets its observation
   first would spare the insert and flatter arm B). Timed from the first
   timed operation until every ring has committed everything
   (``queued() == 0``): operations applied per second, and B/A. Arms
   alternate (A, B, A, B, …, ``--repeats`` each), each on a fresh instance;
   an arm with over 5 % other load is measured again (``--retry-noisy``).
   After each arm: live counts per space, ``observations_total`` and
   ``forgets_total`` must match what was sent, a sample of forgotten vectors
   must not find their ids, and a sample of live ones must find themselves.

2. **Latency during a compaction** (``--parts compaction``). One space,
   ``--shard`` vectors observed at full speed into one shard (stealing off:
   ``--steal-threshold`` 10^9 and ``--autotune off``, so the space stays in
   its home worker's shard); the insert rate over the last quarter of that
   build is the worker's maximum on this shard. Then a paced producer thread
   observes batches of ``--pace-batch`` new ids at ``--rate-share`` of that
   maximum (or ``--rate``) into the same space, without a pause, through two
   windows of the same length: "no compaction", the last D seconds before
   the forget (D: the compaction window's length, at most ``--window``;
   set ``--window`` at least as long as a compaction takes); then
   "compaction", D seconds: at its
   start ``--forget-share`` of the shard's ids are forgotten, which makes
   the shard's dead share pass ``--compact-ratio`` (0.2) and the worker
   rebuilds it between batches; the window ends when ``compactions_total``
   increments (the new index swapped in). Latency, per window: the engine's
   own ``observation_latency_seconds`` histogram (enqueue → inserted; delta
   of the metric array over the window; P50/P99 interpolated inside the
   buckets, 1 ms … 5 s, like ``histogram_quantile``), and each paced
   batch's enqueue → committed time at full resolution (its ring's tail
   passing the batch, polled every 0.5 ms). ``--repeats-compaction`` fresh instances;
   the rate is fixed by the first build and kept for every repeat. Also
   recorded: compaction duration, ``compaction_reclaimed_bytes_total``,
   ``index_deleted_vectors`` and the worker's RSS before and after, the
   snapshots finished (ok, failed) in each window (a slot whose log holds
   over 1,024 tombstones snapshots every 5 s, engine/storage/slotstore.py),
   and the worker's "compacted" log lines. A compaction that has not
   finished after ``--compaction-timeout`` s, or a worker restart, is
   recorded (with the engine's warnings) and ends the part: the engine
   misbehaved, and the bench does not measure around it.

Every run records the CPU time other processes took on the host in its
window ("other load"; over 5 % is marked NOISY). Output: JSON (every arm,
every latency) and a PNG next to it: throughput per run, latency CDFs, and
the latency of each paced batch over time in the first compaction repeat.

Usage: python bench/forget.py [--parts mix,compaction] [--ops 200000] [--shard 120000]
Writes bench/results/forget.json (or --out) and forget.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))

import cdfplot  # noqa: E402
import ingest  # noqa: E402
from engine.control.layouts import LANE_INDEX  # noqa: E402
from engine.ledger import book  # noqa: E402
from engine.producer.routing import home_slot  # noqa: E402
from metrics import readout  # noqa: E402
from tests.harness import EngineProcess, wait_for  # noqa: E402

SEED = 20250301
POLL_S = 0.005
NO_STEAL = 1_000_000_000
COMPACTED = re.compile(r"compacted the shard of space \d+: (\d+) -> (\d+) vectors, (\d+) -> (\d+) bytes in ([\d.]+)s")


# -- engines and metrics ---------------------------------------------------------
class Instance:
    """One engine run: start, wait for every worker, always tear down (and keep the log's gist)."""

    def __init__(self, workdir: str, args, **flags):
        self.keep_logs = args.keep_logs
        self.ep = EngineProcess(workdir, defaults=None, prefix="forget", log_tail=200_000,
                                workers=args.workers, dim=args.dim, metric="cosine", metrics_addr="127.0.0.1:0",
                                grpc_addr="127.0.0.1:0", log_level="info", **flags)
        self.eng = None

    def __enter__(self) -> "Instance":
        try:
            self.ep.start(wait=False)
            self.ep.wait_ready(60, workers=True)
            self.eng = self.ep.engine()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.gist = [line for line in self.ep.log().splitlines()
                     if "compact" in line or " WARNING " in line or " ERROR " in line or "Traceback" in line]
        self.eng = None
        self.ep.disconnect()
        self.ep.terminate(60)
        if self.keep_logs:
            os.makedirs(self.keep_logs, exist_ok=True)
            shutil.copy(self.ep.log_path, self.keep_logs)
        if self.ep.cleanup():
            print(f"warning: shared memory of {self.ep.name} left behind", file=sys.stderr)
        shutil.rmtree(self.ep.data_dir, ignore_errors=True)

    def alive(self) -> None:
        self.ep.check_alive()

    def drained(self) -> bool:
        self.alive()
        return all(r.queued() == 0 for r in self.eng.inst.rings)

    def snap(self) -> np.ndarray:
        return self.eng.inst.metrics.snapshot()

    def total(self, snap: np.ndarray, name: str) -> float:
        return float(readout.block(self.eng.inst.metrics, snap, name).sum())

    def snapshots(self, snap: np.ndarray) -> tuple[float, float]:
        """Snapshots finished (ok, failed), every slot together."""
        b = readout.block(self.eng.inst.metrics, snap, "snapshots_total")  # worker_id x result x 1
        return float(b[:, 0].sum()), float(b[:, 1].sum())

    def hist(self, s0: np.ndarray, s1: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(bounds, counts, sum) of ``name`` between two snapshots, every label together."""
        bounds, c0, sum0 = readout.histogram(self.eng.inst.metrics, s0, name)
        _, c1, sum1 = readout.histogram(self.eng.inst.metrics, s1, name)
        return bounds, c1 - c0, sum1 - sum0

    def pids(self) -> list[int]:
        try:
            sup = psutil.Process(self.ep.proc.pid)
            return [os.getpid(), sup.pid] + [c.pid for c in sup.children(recursive=True)]
        except psutil.Error:
            return [os.getpid()]

    def worker_rss(self, slot: int) -> int | None:
        pid = self.ep.status()["workers"][slot]["pid"]
        try:
            return psutil.Process(pid).memory_info().rss
        except (psutil.Error, TypeError):
            return None


class LoadMeter:
    """CPU share of the host that processes other than ours took over a window."""

    def __init__(self, inst: Instance):
        self.pids = inst.pids()
        self.t0, self.host0, self.own0 = time.monotonic(), ingest.host_busy_s(), self.own()

    def own(self) -> float:
        return sum(x for x in ingest._cpu_seconds(self.pids) if x is not None)

    def share(self) -> float:
        wall = time.monotonic() - self.t0
        other = ingest.host_busy_s() - self.host0 - (self.own() - self.own0)
        return round(max(0.0, other) / (len(ingest.usable_cpus()) * wall), 3)


def submit(inst: Instance, kind: str, space: str, ids: np.ndarray, vecs: np.ndarray | None) -> tuple[int, int]:
    """Observe or forget, resubmitting a refused suffix; (refused records, forgets not found)."""
    eng, done, refused, missing = inst.eng, 0, 0, 0
    while done < len(ids):
        if kind == "observe":
            n = eng.observe(space, ids[done:], vecs[done:]).accepted
        else:
            res = eng.forget(space, ids[done:], wait=False)
            n, missing = res.accepted, missing + res.not_found
        refused += len(ids) - done - n
        done += n
        if done < len(ids):
            inst.alive()
            time.sleep(0.001)
    return refused, missing


def check_recall(inst: Instance, space: str, live: tuple, gone: tuple, k: int = 10) -> dict:
    """Forgotten vectors must not find their ids; live ones should find themselves."""
    eng = inst.eng
    found_gone = sum(int(i) in set(eng.recall(space, v, k=k).ids.ravel().tolist()) for i, v in zip(*gone))
    self_hits = sum(int(i) in set(eng.recall(space, v, k=k).ids.ravel().tolist()) for i, v in zip(*live))
    return {"forgotten_found": found_gone, "forgotten_checked": len(gone[0]),
            "live_self_hits": self_hits, "live_checked": len(live[0])}


# -- 1. throughput with 10 % forgets ---------------------------------------------------
def plan(args) -> list[tuple[str, int]]:
    """The timed operation stream of arm B: ("observe"|"forget", space number) per batch."""
    out, space = [], 0
    for b in range(args.ops // args.batch):
        if args.forget_every and b % args.forget_every == args.forget_every - 1:
            out.append(("forget", b // args.forget_every % args.spaces))
        else:
            out.append(("observe", space))
            space = (space + 1) % args.spaces
    return out


def measure_mix(args, arm: str, vecs: np.ndarray, workdir: str) -> dict:
    """One arm on a fresh instance: "A" observations only, "B" with forgets."""
    rng = np.random.default_rng(SEED + 1)  # the same forget choices in every B run
    B, names = args.batch, [f"mix-{i}" for i in range(args.spaces)]
    ops = plan(args) if arm == "B" else [("observe", b % args.spaces) for b in range(args.ops // B)]
    row_of = np.zeros(args.prefix + args.ops + B, np.int64)  # id -> row of vecs it was sent with
    # Per space: ids old enough to forget (none forgotten yet), and (sent, ids) younger ones.
    ready = [np.zeros(0, np.uint64) for _ in names]
    young: list[collections.deque] = [collections.deque() for _ in names]
    gone = [[] for _ in names]
    st = {"next_id": 0, "row": 0, "sent": 0, "refused": 0, "missing": 0, "unapplied": 0, "lead_wait": 0.0}
    with Instance(workdir, args) as inst:
        eng = inst.eng

        def observe(s: int) -> None:
            ids = np.arange(st["next_id"], st["next_id"] + B, dtype=np.uint64)
            row_of[ids.astype(np.int64)] = np.arange(st["row"], st["row"] + B)
            st["refused"] += submit(inst, "observe", names[s], ids, vecs[st["row"]:st["row"] + B])[0]
            young[s].append((st["sent"], ids))
            st["next_id"] += B
            st["row"] = (st["row"] + B) % (len(vecs) - B + 1)

        def forget(s: int) -> int:
            while young[s] and young[s][0][0] <= st["sent"] - 2 * args.lead:
                ready[s] = np.concatenate([ready[s], young[s].popleft()[1]])
            pick = rng.choice(len(ready[s]), size=min(B, len(ready[s])), replace=False)
            keep = np.ones(len(ready[s]), bool)
            keep[pick] = False
            ids, ready[s] = ready[s][pick], ready[s][keep]
            st["unapplied"] += int(book.absent(eng.inst.ids, eng.spaces.lookup(names[s]), ids).sum())
            refused, missing = submit(inst, "forget", names[s], ids, None)
            st["refused"] += refused
            st["missing"] += missing
            gone[s].append(ids)
            return len(ids)

        for b in range(args.prefix // B):  # untimed: something to forget from the first forget on
            observe(b % args.spaces)
            st["sent"] += B
        wait_for(inst.drained, 120, POLL_S, "the prefix committed")
        snap0, load, sent0 = inst.snap(), LoadMeter(inst), st["sent"]
        t0 = time.perf_counter()
        for kind, s in ops:
            t_wait = time.perf_counter()
            while sum(r.queued() for r in eng.inst.rings) > args.lead:  # held back, as by backpressure
                time.sleep(0.0005)
            st["lead_wait"] += time.perf_counter() - t_wait
            if kind == "observe":
                observe(s)
                st["sent"] += B
            else:
                st["sent"] += forget(s)
        wait_for(inst.drained, 600, POLL_S, "every ring committed")
        seconds = time.perf_counter() - t0
        other = load.share()
        snap1 = inst.snap()
        n_ops = st["sent"] - sent0
        n_forget = sum(len(x) for g in gone for x in g)
        live = sum(int(eng.inst.ids.held[:, eng.spaces.lookup(n)].sum()) for n in names)
        observed = inst.total(snap1, "observations_total") - inst.total(snap0, "observations_total")
        forgets = inst.total(snap1, "forgets_total") - inst.total(snap0, "forgets_total")
        gone0 = np.concatenate(gone[0])[:30] if gone[0] else np.zeros(0, np.uint64)
        live0 = ready[0][:30]
        recall = check_recall(inst, names[0], (live0, vecs[row_of[live0.astype(np.int64)]]),
                              (gone0, vecs[row_of[gone0.astype(np.int64)]]))
        out = {
            "arm": arm, "ops": n_ops, "observes": n_ops - n_forget, "forgets": n_forget, "seconds": seconds,
            "ops_per_s": n_ops / seconds, "observes_per_s": (n_ops - n_forget) / seconds, "other_load": other,
            "producer_lead_wait_s": round(st["lead_wait"], 3), "refused_resubmitted": st["refused"],
            "forgets_not_found": st["missing"], "forgets_of_unapplied": st["unapplied"],
            "live": live, "expected_live": st["next_id"] - n_forget,
            "observations_total": observed, "forgets_total": forgets,
            "compactions_total": inst.total(snap1, "compactions_total"),
            "snapshots_ok_failed": [a - b for a, b in zip(inst.snapshots(snap1), inst.snapshots(snap0))],
            "index_deleted_vectors": inst.total(snap1, "index_deleted_vectors"),
            "elements": int(eng.inst.shard_counts.sum()), "recall_check": recall,
        }
        out["ok"] = bool(out["live"] == out["expected_live"] and observed == n_ops - n_forget
                         and forgets == n_forget and recall["forgotten_found"] == 0)
    out["log"] = inst.gist[-20:]
    return out


def part_mix(args, workdir: str) -> dict:
    vecs = np.random.default_rng(SEED).standard_normal((args.prefix + args.ops, args.dim), dtype=np.float32)
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    noisy: list[dict] = []  # measured again, kept for the record
    for r in range(args.repeats):
        for arm in ("A", "B"):
            for attempt in range(1 + args.retry_noisy):
                m = measure_mix(args, arm, vecs, workdir)
                m["repeat"], m["attempt"] = r, attempt
                if m["other_load"] <= ingest.NOISY or attempt == args.retry_noisy:
                    break
                noisy.append(m)
                print(f"  mix repeat {r + 1} arm {arm}: other load {m['other_load']:.0%}, measuring again", flush=True)
            runs[arm].append(m)
            print(f"  mix repeat {r + 1}/{args.repeats} arm {arm}: {m['ops']:,} ops ({m['forgets']:,} forgets) in "
                  f"{m['seconds']:.1f} s = {m['ops_per_s']:,.0f} ops/s, observes {m['observes_per_s']:,.0f}/s, "
                  f"other load {m['other_load']:.0%}" + (" NOISY" if m["other_load"] > ingest.NOISY else "")
                  + ("" if m["ok"] else f"  CHECK FAILED: {json_short(m)}"), flush=True)
    summary = {arm: spread([m["ops_per_s"] for m in ms]) for arm, ms in runs.items()}
    ratios = [b["ops_per_s"] / a["ops_per_s"] for a, b in zip(runs["A"], runs["B"])]
    obs_ratios = [b["observes_per_s"] / a["ops_per_s"] for a, b in zip(runs["A"], runs["B"])]
    out = {"ops_per_s": summary, "ratio_B_over_A": spread(ratios),
           "ratio_of_medians": summary["B"]["median"] / summary["A"]["median"],
           "observes_per_s_B_over_A": spread(obs_ratios), "runs": runs, "noisy_runs_measured_again": noisy}
    # What one forget costs, in inserts: B's time minus the time A takes for B's observations.
    tA = float(np.median([m["seconds"] for m in runs["A"]]))
    tB = float(np.median([m["seconds"] for m in runs["B"]]))
    nB = runs["B"][0]
    per_insert = tA / runs["A"][0]["ops"]
    out["forget_cost_in_inserts"] = (tB - per_insert * nB["observes"]) / nB["forgets"] / per_insert \
        if nB["forgets"] else None
    return out


def spread(xs: list[float]) -> dict:
    return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


def json_short(m: dict) -> str:
    keys = ("live", "expected_live", "observations_total", "observes", "forgets_total", "forgets", "recall_check")
    return ", ".join(f"{k}={m[k]}" for k in keys)


# -- 2. observation latency during a compaction -----------------------------------------
class Pacer(threading.Thread):
    """Observes batches of new ids into one space at a fixed rate (open loop:
    the schedule does not wait for the engine) and keeps each batch's
    (enqueue time, enqueue → committed seconds): committed once its ring's
    tail has passed the batch (this thread is that ring's only producer)."""

    def __init__(self, inst: Instance, space: str, rate: float, batch: int, vecs: np.ndarray, first_id: int):
        super().__init__(daemon=True)
        self.inst, self.space, self.batch, self.vecs = inst, space, batch, vecs
        self.gap = batch / rate
        self.next_id = first_id
        self.ring = inst.eng.inst.ring(home_slot(space, inst.eng.inst.slots), LANE_INDEX["normal"])
        self.samples: list[tuple[float, float]] = []
        self.sent = 0
        self.refused = 0
        self.misplaced = 0  # batches that did not land whole in the home ring (their time is not exact)
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        eng, ring, pending = self.inst.eng, self.ring, collections.deque()
        next_at = time.monotonic()
        row = 0
        while not (self.halt.is_set() and not pending):
            now = time.monotonic()
            if now >= next_at and not self.halt.is_set():
                ids = np.arange(self.next_id, self.next_id + self.batch, dtype=np.uint64)
                vecs = self.vecs[row:row + self.batch]
                head0 = ring.head
                done = 0
                while done < len(ids):
                    n = eng.observe(self.space, ids[done:], vecs[done:]).accepted
                    self.refused += len(ids) - done - n
                    done += n
                    if done < len(ids):
                        time.sleep(0.001)
                head = ring.head
                self.misplaced += head - head0 != len(ids)
                pending.append((now, head))
                self.next_id += self.batch
                self.sent += self.batch
                row = (row + self.batch) % (len(self.vecs) - self.batch + 1)
                next_at += self.gap
            tail = ring.tail
            t = time.monotonic()
            while pending and tail >= pending[0][1]:
                sent_at, _ = pending.popleft()
                self.samples.append((sent_at, t - sent_at))
            time.sleep(0.0005)


class Ticks:
    """The latency histogram and snapshot counter, sampled over time (to cut a window of any length afterwards)."""

    def __init__(self, inst: Instance):
        self.inst = inst
        self.rows: list[tuple[float, np.ndarray, float, float]] = []

    def tick(self) -> None:
        snap = self.inst.snap()
        bounds, counts, total = readout.histogram(self.inst.eng.inst.metrics, snap, "observation_latency_seconds")
        self.bounds = bounds
        self.rows.append((time.monotonic(), counts.copy(), total, self.inst.snapshots(snap)))

    def at(self, t: float) -> tuple:
        """The last row at or before ``t``."""
        best = self.rows[0]
        for row in self.rows:
            if row[0] <= t:
                best = row
        return best


def window_stats(ticks: Ticks, pacer: Pacer, t0: float, t1: float) -> dict:
    a, b = ticks.at(t0), ticks.at(t1)
    counts = b[1] - a[1]
    lat = np.array([x for s, x in pacer.samples if t0 <= s < t1])
    out = {"t0": t0, "t1": t1, "seconds": b[0] - a[0], "observations": int(counts.sum()),
           "engine_p50_s": readout.quantile(ticks.bounds, counts, 0.50),
           "engine_p99_s": readout.quantile(ticks.bounds, counts, 0.99),
           "engine_mean_s": float((b[2] - a[2]) / max(1, counts.sum())),
           "engine_buckets": {("+Inf" if i == len(ticks.bounds) else f"{ticks.bounds[i]:g}"): int(c)
                              for i, c in enumerate(counts)},
           "snapshots_ok_failed": [y - x for x, y in zip(a[3], b[3])], "batches": len(lat)}
    if len(lat):
        out.update({"batch_p50_s": float(np.percentile(lat, 50)), "batch_p99_s": float(np.percentile(lat, 99)),
                    "batch_max_s": float(lat.max())})
    return out


def measure_compaction(args, vecs: np.ndarray, rate: float | None, workdir: str) -> dict:
    """Build one big shard at full speed, then paced ingest: a window without,
    and one with a compaction (started by a large forget)."""
    space, B = "compact", 1000
    rng = np.random.default_rng(SEED + 2)
    with Instance(workdir, args, steal_threshold=NO_STEAL, autotune="off") as inst:
        eng = inst.eng
        home = home_slot(space, eng.inst.slots)
        t_q = None
        t_build = time.monotonic()
        for lo in range(0, args.shard, B):
            while sum(r.queued() for r in eng.inst.rings) > args.lead:
                if t_q is None and eng.inst.shard_counts.sum() >= 0.75 * args.shard:
                    t_q, n_q = time.monotonic(), int(eng.inst.shard_counts.sum())
                time.sleep(0.001)
            ids = np.arange(lo, min(lo + B, args.shard), dtype=np.uint64)
            submit(inst, "observe", space, ids, vecs[lo:lo + len(ids)])
        while not inst.drained():
            if t_q is None and eng.inst.shard_counts.sum() >= 0.75 * args.shard:
                t_q, n_q = time.monotonic(), int(eng.inst.shard_counts.sum())
            time.sleep(0.001)
        t_built = time.monotonic()
        if t_q is None:  # a build too small to see its last quarter
            t_q, n_q = t_build, 0
        max_rate = (args.shard - n_q) / (t_built - t_q)
        rate = rate or args.rate or args.rate_share * max_rate
        idx = eng.spaces.lookup(space)
        counts = eng.inst.shard_counts[:, idx].tolist()
        print(f"  built {args.shard:,} vectors in {t_built - t_build:.1f} s (shards per slot {counts}); "
              f"last quarter at {max_rate:,.0f}/s; pacing {rate:,.0f}/s in batches of {args.pace_batch}", flush=True)
        ticks = Ticks(inst)
        pacer = Pacer(inst, space, rate, args.pace_batch, vecs[args.shard:], args.shard)
        pacer.start()
        ticks.tick()
        deadline = time.monotonic() + args.warmup + args.window
        load = None
        while time.monotonic() < deadline:
            if load is None and time.monotonic() >= deadline - args.window:
                load = LoadMeter(inst)
            time.sleep(0.25)
            ticks.tick()
            inst.alive()
        other_base = load.share()
        snap_f = inst.snap()
        rss0 = inst.worker_rss(home)
        deleted0 = inst.total(snap_f, "index_deleted_vectors")
        t_f = ticks.rows[-1][0]
        load = LoadMeter(inst)
        # A share of the shard as it is now (the paced ingest has grown it), taken from the built ids.
        elements = int(eng.inst.shard_counts[:, idx].sum())
        victims = rng.choice(args.shard, size=min(args.shard, int(args.forget_share * elements)),
                             replace=False).astype(np.uint64)
        for lo in range(0, len(victims), 10_000):
            submit(inst, "forget", space, victims[lo:lo + 10_000], None)
        t_forgot = time.monotonic()
        c0 = inst.total(snap_f, "compactions_total")
        deleted_peak = 0.0
        give_up, finished = t_f + args.compaction_timeout, True
        while True:
            time.sleep(0.25)
            ticks.tick()
            inst.alive()
            if pacer.error is not None:
                raise pacer.error
            snap = inst.snap()
            deleted_peak = max(deleted_peak, inst.total(snap, "index_deleted_vectors"))
            if inst.total(snap, "compactions_total") > c0:
                break
            if time.monotonic() > give_up:  # recorded, with the log; the checks below still run
                finished = False
                break
        t_done = ticks.rows[-1][0]
        other_comp = load.share()
        snap_d = inst.snap()
        pacer.halt.set()
        pacer.join(60)
        if pacer.error is not None:
            raise pacer.error
        wait_for(inst.drained, 300, POLL_S, "every ring committed")
        d = t_done - t_f
        base = window_stats(ticks, pacer, max(t_f - d, t_f - args.window), t_f)
        comp = window_stats(ticks, pacer, t_f, t_done)
        base["other_load"], comp["other_load"] = other_base, other_comp
        _, dur_counts, dur_sum = inst.hist(snap_f, snap_d, "compaction_duration_seconds")
        snap_end = inst.snap()
        live = int(eng.inst.ids.held[:, idx].sum())
        expect = args.shard - len(victims) + pacer.sent
        gone = victims[:30]
        keep = np.setdiff1d(np.arange(args.shard, dtype=np.uint64), victims)[:30]
        recall = check_recall(inst, space, (keep, vecs[keep.astype(np.int64)]), (gone, vecs[gone.astype(np.int64)]))
        out = {
            "compaction_finished": finished,
            "worker_restarts": inst.total(snap_end, "worker_restarts_total"),
            "elements_per_slot_after": eng.inst.shard_counts[:, idx].tolist(),
            "shard": args.shard, "build_seconds": t_built - t_build, "max_rate_per_s": max_rate, "rate_per_s": rate,
            "pace_batch": args.pace_batch, "shard_per_slot_after_build": counts, "home_slot": home,
            "elements_at_forget": elements, "forgotten": len(victims), "forget_submit_s": t_forgot - t_f,
            "no_compaction": base, "compaction": comp,
            "compactions": float(dur_counts.sum()), "compaction_seconds": dur_sum,
            "compaction_reclaimed_bytes": inst.total(snap_end, "compaction_reclaimed_bytes_total"),
            "index_deleted_vectors_before_forget": deleted0, "index_deleted_vectors_peak": deleted_peak,
            "index_deleted_vectors_after": inst.total(snap_end, "index_deleted_vectors"),
            "elements_after": int(eng.inst.shard_counts[:, idx].sum()),
            "worker_rss_before_forget": rss0, "worker_rss_after_compaction": inst.worker_rss(home),
            "paced_sent": pacer.sent, "paced_refused": pacer.refused, "paced_misplaced": pacer.misplaced,
            "live": live, "expected_live": expect, "recall_check": recall,
            "batch_samples": [(round(s - t_f, 4), round(x * 1e3, 3)) for s, x in pacer.samples],
            "ticks_s": [round(t - t_f, 3) for t, *_ in ticks.rows],
        }
        out["ok"] = bool(finished and live == expect and recall["forgotten_found"] == 0 and out["compactions"] >= 1
                         and not out["worker_restarts"])
    out["log"] = inst.gist[-40:]
    # The worker's own account: "compacted the shard of space S: A -> B vectors, X -> Y bytes in T s".
    out["compacted_lines"] = [list(map(float, m.groups())) for m in map(COMPACTED.search, inst.gist) if m]
    return out


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def part_compaction(args, workdir: str) -> dict:
    # The build's vectors, then 100,000 the paced producer cycles through (with new ids).
    vecs = np.random.default_rng(SEED + 3).standard_normal((args.shard + 100_000, args.dim), dtype=np.float32)
    runs, rate, failed = [], None, []
    for r in range(args.repeats_compaction):
        m = measure_compaction(args, vecs, rate, workdir)
        rate = m["rate_per_s"]
        m["repeat"] = r
        if not m["compaction_finished"] or m["worker_restarts"]:
            failed.append(m)
            print(f"  compaction repeat {r + 1}: compaction finished: {m['compaction_finished']}, worker restarts "
                  f"{m['worker_restarts']:g}, live {m['live']} (expected {m['expected_live']}); engine log:\n    "
                  + "\n    ".join(m["log"]), flush=True)
            break  # the engine misbehaved: report it, do not measure around it
        runs.append(m)
        b, c = m["no_compaction"], m["compaction"]
        print(f"  compaction repeat {r + 1}/{args.repeats_compaction}: compaction {m['compaction_seconds']:.1f} s "
              f"(window {c['seconds']:.1f} s), reclaimed {m['compaction_reclaimed_bytes'] / 2**20:.0f} MiB; "
              f"engine P50/P99 {ms(b['engine_p50_s'])}/{ms(b['engine_p99_s'])} -> "
              f"{ms(c['engine_p50_s'])}/{ms(c['engine_p99_s'])} ms; batches P50/P99/max "
              f"{ms(b.get('batch_p50_s'))}/{ms(b.get('batch_p99_s'))}/{ms(b.get('batch_max_s'))} -> "
              f"{ms(c.get('batch_p50_s'))}/{ms(c.get('batch_p99_s'))}/{ms(c.get('batch_max_s'))} ms; "
              f"other load {b['other_load']:.0%}/{c['other_load']:.0%}"
              + ("" if m["ok"] else f"  CHECK FAILED: live {m['live']} expected {m['expected_live']}, "
                 f"recall {m['recall_check']}"), flush=True)
    if not runs:
        return {"failed_runs": failed, "runs": []}
    summary = {}
    for arm in ("no_compaction", "compaction"):
        summary[arm] = {k: spread([m[arm][k] for m in runs if m[arm].get(k) is not None])
                        for k in ("engine_p50_s", "engine_p99_s", "batch_p50_s", "batch_p99_s", "batch_max_s")}
    ratios = {k: spread([m["compaction"][k] / m["no_compaction"][k] for m in runs])
              for k in ("engine_p50_s", "engine_p99_s", "batch_p50_s", "batch_p99_s")}
    return {"latency": summary, "ratio_compaction_over_none": ratios,
            "compaction_seconds": spread([m["compaction_seconds"] for m in runs]), "runs": runs,
            "failed_runs": failed}


# -- output --------------------------------------------------------------------------
def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("mix", "compaction") if p in result]
    panels = ("mix" in result) + 2 * ("compaction" in result)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.8), squeeze=False)
    axes = list(axes[0])
    p = result["parameters"]
    if "mix" in parts:
        ax = axes.pop(0)
        for j, arm in enumerate(("A", "B")):
            vals = [m["ops_per_s"] for m in result["mix"]["runs"][arm]]
            ax.scatter([j] * len(vals), vals, color=f"C{j}", zorder=3)
            ax.bar(j, np.median(vals), color=f"C{j}", alpha=0.4)
        ax.set_xticks([0, 1], ["A: observes only", f"B: 1 batch in {p['forget_every']}\nis a forget"])
        ax.set_ylabel("operations applied per second")
        r = result["mix"]["ratio_B_over_A"]
        ax.set_title(f"{p['ops']:,} ops, {p['dim']}-d, {p['workers']} workers; B/A median {r['median']:.3f} "
                     f"({r['min']:.3f}-{r['max']:.3f})", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    if "compaction" in parts:
        runs = result["compaction"]["runs"] or result["compaction"]["failed_runs"]
        ax = axes.pop(0)
        for j, arm in enumerate(("no_compaction", "compaction")):
            lat = [x for m in runs for s, x in m["batch_samples"]
                   if m[arm]["t0"] - _tf(m) <= s < m[arm]["t1"] - _tf(m)]
            cdfplot.line(ax, lat, arm.replace("_", " "), f"C{j}")
        cdfplot.axes(ax, "batch enqueue -> committed, ms (log)",
                     f"paced {runs[0]['rate_per_s']:,.0f}/s in batches of {p['pace_batch']} into a "
                     f"{p['shard']:,}-vector shard; {len(runs)} run(s) pooled")
        ax.set_ylabel("fraction of batches")
        ax = axes.pop(0)
        m = runs[0]
        xs, ys = zip(*m["batch_samples"])
        ax.plot(xs, ys, ".", markersize=2)
        ax.axvline(0, color="C3", lw=1, label="forget issued")
        ax.axvline(m["compaction"]["t1"] - _tf(m), color="C2", lw=1,
                   label="compaction swapped in" if m["compaction_finished"] else "gave up waiting")
        ax.axvspan(m["no_compaction"]["t0"] - _tf(m), 0, color="C0", alpha=0.08, label="no-compaction window")
        ax.set_yscale("log")
        ax.set_xlabel("seconds from the forget")
        ax.set_ylabel("batch enqueue -> committed, ms (log)")
        took = f"compaction {m['compaction_seconds']:.1f} s" if m["compaction_finished"] else \
            f"none finished in {m['compaction']['seconds']:.0f} s"
        ax.set_title(f"run {m['repeat'] + 1}: forget {m['forgotten']:,} of {m['elements_at_forget']:,}; {took}",
                     fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    cdfplot.save(fig, path)


def _tf(m: dict) -> float:
    """Monotonic time of the forget in run ``m`` (its windows keep absolute times)."""
    return m["compaction"]["t0"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="mix,compaction", help="mix (throughput), compaction (latency), or both")
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1000, help="observe and forget batch (mix)")
    p.add_argument("--ops", type=int, default=200_000, help="timed operations per arm (mix)")
    p.add_argument("--prefix", type=int, default=20_000, help="untimed observations before each arm (mix)")
    p.add_argument("--spaces", type=int, default=8, help="spaces, round-robin (mix)")
    p.add_argument("--forget-every", type=int, default=10, help="every N-th batch of arm B is a forget (mix)")
    p.add_argument("--lead", type=int, default=10_000, help="most records the producer keeps queued")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mix arm, alternating A, B")
    p.add_argument("--retry-noisy", type=int, default=1, help="measure a mix arm again (at most this many times) "
                   "when other processes took more than 5%% of the host during it")
    p.add_argument("--shard", type=int, default=120_000, help="vectors in the shard that is compacted")
    p.add_argument("--forget-share", type=float, default=0.3, help="share of the shard forgotten at once")
    p.add_argument("--rate", type=float, default=0.0, help="paced observations/s (0: --rate-share of the "
                   "insert rate measured over the last quarter of the first build)")
    p.add_argument("--rate-share", type=float, default=0.5)
    p.add_argument("--pace-batch", type=int, default=50)
    p.add_argument("--window", type=float, default=30.0, help="seconds of paced ingest before the forget; the "
                   "no-compaction window is its last part, as long as the compaction window (at most this)")
    p.add_argument("--warmup", type=float, default=2.0, help="paced seconds before the no-compaction window")
    p.add_argument("--compaction-timeout", type=float, default=240.0)
    p.add_argument("--repeats-compaction", type=int, default=2)
    p.add_argument("--keep-logs", default=None, help="copy every instance's log into this folder")
    p.add_argument("--out", default=os.path.join(BENCH, "results", "forget.json"))
    args = p.parse_args(argv)
    if args.prefix < 2 * args.lead:
        p.error("--prefix must be at least 2 x --lead: forgets take ids observed 2 x --lead operations before")
    signal.signal(signal.SIGTERM, ingest._interrupt)  # SIGTERM tears the engine instance down too
    parts = args.parts.split(",")
    result = {"benchmark": "forget", "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(), "parameters": vars(args), "loadavg_before": ingest.loadavg()}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="engram-forget-") as workdir:
        if "mix" in parts:
            result["mix"] = part_mix(args, workdir)
            mx = result["mix"]
            print(f"mix: A {mx['ops_per_s']['A']['median']:,.0f} ops/s, B {mx['ops_per_s']['B']['median']:,.0f} "
                  f"ops/s (medians of {args.repeats}); B/A per repeat median {mx['ratio_B_over_A']['median']:.3f} "
                  f"(min {mx['ratio_B_over_A']['min']:.3f}, max {mx['ratio_B_over_A']['max']:.3f}); one forget "
                  f"costs {mx['forget_cost_in_inserts'] or 0:.2f} inserts (from the medians, noisy)", flush=True)
        if "compaction" in parts:
            result["compaction"] = part_compaction(args, workdir)
            cp = result["compaction"]
            for k in [] if not cp["runs"] else ("engine_p50_s", "engine_p99_s", "batch_p50_s", "batch_p99_s"):
                r = cp["ratio_compaction_over_none"][k]
                print(f"compaction/none {k[:-2]}: {ms(cp['latency']['no_compaction'][k]['median'])} -> "
                      f"{ms(cp['latency']['compaction'][k]['median'])} ms, ratio median {r['median']:.2f} "
                      f"(min {r['min']:.2f}, max {r['max']:.2f})")
    result["wall_seconds"] = time.monotonic() - t0
    result["loadavg_after"] = ingest.loadavg()
    path = ingest.write_result(result, "forget", args.workers, args.out)
    plot(result, os.path.splitext(path)[0] + ".png")
    ok = all(m["ok"] for ms_ in result.get("mix", {}).get("runs", {}).values() for m in ms_) and \
        all(m["ok"] for m in result.get("compaction", {}).get("runs", [])) and \
        not result.get("compaction", {}).get("failed_runs")
    if not ok:
        print("A CHECK FAILED: see 'ok' in the JSON", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
