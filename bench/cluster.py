"""Cluster mode: ingest through the log against the local gateway path, apply from the log, failover.

Three measurements in one run on this host, all on one local nats-server
(JetStream; ``tests.cluster_helpers.NatsCluster``), log replicas 1:

1. **ingest** -- the same data set (``--n`` x ``--dim`` float32 standard
   normal, round-robin over ``--spaces`` spaces in batches of ``--batch``)
   sent by the same client code (``engine.client.Client``, one session per
   space, one batch in flight) through the gRPC gateway of (a) a single-host
   engine and (b) a one-host cluster engine: the same flags (``--workers``
   pinned workers) plus ``--cluster``, ``--partitions``, ``--log-replicas 1``,
   a lease ttl of ``--ingest-lease-ttl`` (10 s) and no snapshots. Per side
   two rates: acknowledged (N / time to the last ack) and applied (N / time
   until the shard counts in shared memory add up to N). The order
   alternates between repeats. CPU seconds per process role (and of
   nats-server and of this process, the client) over each run show where
   the time goes.
2. **apply** -- the stream of the last cluster run of 1, whose host was
   stopped (SIGTERM; no snapshot exists, ``--cluster-snapshot-interval 0``),
   is applied by a fresh host of the same cluster: N / (its first lease
   acquisition, read from its JSON log, until its shard counts add up to N).
3. **failover** -- per partition size S of ``--sizes``, without and with a
   snapshot: a fresh 2-host cluster (1 worker each, unpinned, lease ttl
   ``--lease-ttl``). S vectors of one space whose partition the victim owns
   are sent through the other host's gateway and applied by the victim.
   With snapshot, both hosts run ``--cluster-snapshot-interval``
   ``--snapshot-interval`` and the bench waits until the victim's partition
   table says a snapshot covers the partition's last stream sequence.
   Then SIGKILL of the victim's process group; timed until the survivor
   serves the partition and holds all S vectors (also: until it holds the
   lease, until it serves).

A wait in which no more vectors are inserted for ``--stall-s`` is recorded
under ``incidents`` and its measurement runs once more (a guard: before a
fix of the follower, a lease could stay held with its applier stopped; see
docs/performance.md).

Every process started here (nats-server, engine process groups) is killed
and every shared-memory object removed on the way out, also on an error,
Ctrl-C or SIGTERM; the run ends by checking ``/dev/shm``.

Usage: python bench/cluster.py [--n 100000] [--workers 2] [--sizes 5000,20000,50000]
Writes bench/results/cluster.json (or --out) and a PNG next to it.
Needs nats-server on PATH and pytest importable (``tests.cluster_helpers``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402  (machine info, JSON output, SIGTERM -> KeyboardInterrupt; puts the root on sys.path)

from engine.client import Client  # noqa: E402
from engine.cluster import names  # noqa: E402
from engine.control.partitions import P_EPOCH, P_SNAP_SEQ, P_STATE, P_STREAM_LAST, SERVING  # noqa: E402
from shm.segment import instance_objects  # noqa: E402
from tests.cluster_helpers import NatsCluster  # noqa: E402
from tests.harness import EngineProcess, Gone, WaitTimeout, free_port, wait_for  # noqa: E402

SEED = 20240611
POLL_S = 0.01
OVERLOADED_AT = 0.95  # as bench/ingest.py: rings sized so that nothing is ever refused


class BenchError(Exception):
    pass


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().strip()


# -- one engine instance --------------------------------------------------------------
class Host:
    """``python -m engine run`` (tests/harness.py) with the bench's flags; JSON logs at info."""

    def __init__(self, workdir: str, flags: dict):
        self.target = f"127.0.0.1:{free_port()}"
        self.inst = EngineProcess(workdir, defaults=None, prefix="bench", log_tail=6000,
                                  grpc_addr=self.target, metrics_addr="127.0.0.1:0", log_level="info",
                                  log_format="json", **flags)
        self.name = self.inst.name
        self.started = 0.0  # time.time() of the spawn

    def start(self, timeout: float = 120.0) -> "Host":
        self.started = time.time()
        try:
            self.inst.start(wait=False)
            self.inst.wait_ready(timeout, workers=True)
        except AssertionError as exc:  # exited or not ready: the message carries the log
            raise BenchError(str(exc)) from None
        return self

    def alive(self) -> None:
        """Raise ``EngineExited`` (a ``Gone``: ``wait_for`` stops at once) if the host has exited."""
        self.inst.check_alive()

    def counts(self) -> dict[str, int]:
        self.alive()
        inst = self.inst.engine().inst
        per_space = inst.shard_counts.sum(axis=0)
        return {name: int(per_space[i]) for i, name in inst.space_names().items()}

    def total(self) -> int:
        self.alive()
        return int(self.inst.engine().inst.shard_counts.sum())

    def rows(self) -> np.ndarray:
        return self.inst.engine().inst.partition_rows

    def owned(self) -> set[int]:
        rows = self.rows()
        return {p for p in range(len(rows)) if int(rows[p, P_EPOCH]) and int(rows[p, P_STATE]) == SERVING}

    def log_events(self, needle: str) -> list[float]:
        """Unix times of the JSON log lines whose message contains ``needle``."""
        return [t for t, _ in self.log_lines(needle)]

    def log_lines(self, needle: str) -> list[tuple[float, str]]:
        """(unix time, message) of the JSON log lines whose message contains ``needle``."""
        out = []
        try:
            with open(self.inst.log_path, errors="replace") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if needle in rec.get("message", ""):
                        t = datetime.datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
                        out.append((t.replace(tzinfo=datetime.timezone.utc).timestamp(), rec["message"]))
        except OSError:
            pass
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds of the instance's live processes, by role (process title)."""
        out: dict[str, float] = {}
        if self.inst.proc is None:
            return out
        try:
            sup = psutil.Process(self.inst.proc.pid)
            procs = [sup] + sup.children(recursive=True)
        except psutil.Error:
            return out
        for p in procs:
            try:
                title = p.cmdline()
                t = p.cpu_times()
            except psutil.Error:
                continue
            words = " ".join(title).split()
            role = words[1] if len(words) > 1 and words[0] == "engram:" else "supervisor"
            out[role] = out.get(role, 0.0) + t.user + t.system
        return out

    def kill9(self) -> None:
        os.killpg(self.inst.proc.pid, signal.SIGKILL)
        self.inst.proc.wait(10)

    def stop(self) -> list[tuple[str, str]]:
        """SIGTERM and wait, then SIGKILL the group and remove its shared memory; what is left."""
        self.inst.disconnect()
        self.inst.terminate(30)
        left = self.inst.cleanup()
        shutil.rmtree(self.inst.data_dir, ignore_errors=True)
        return left


class Hosts:
    """Every host started, stopped on the way out whatever happened."""

    def __init__(self, logs: str | None = None):
        self.all: list[Host] = []
        self.names: list[str] = []
        self.left: list[tuple[str, str]] = []  # shared-memory objects a stop left behind
        self.logs = logs  # a folder to keep each host's log in, or None

    def add(self, host: Host) -> Host:
        self.all.append(host)
        self.names.append(host.name)
        return host

    def stop(self, host: Host) -> None:
        if host in self.all:
            if sys.exc_info()[0] is not None:  # called from a ``finally`` on the way out of an error
                sys.stderr.write(f"\n--- log of {host.name} ---\n{host.inst.log()}\n")
            self.all.remove(host)
            self.left += host.stop()
            if self.logs:
                os.makedirs(self.logs, exist_ok=True)
                shutil.copy(host.inst.log_path, self.logs)

    def stop_all(self) -> None:
        for h in list(self.all):
            self.stop(h)


def engine_flags(args, workers: int, capacity: int, pin: bool = True) -> dict:
    flags = {"workers": workers, "dim": args.dim, "metric": "cosine", "hnsw_m": 16, "ef_construction": 200,
             "capacity_normal": capacity, "capacity_high": 16 * workers, "capacity_low": 16 * workers}
    if not pin:
        flags["no_pin"] = ""
    return flags


def cluster_flags(args, nats: NatsCluster, cluster: str, host_id: str, ttl: float,
                  snapshot_interval: float = 0.0) -> dict:
    return {"cluster": cluster, "nats": nats.urls, "host_id": host_id, "partitions": args.partitions,
            "log_replicas": 1, "lease_ttl": ttl, "cluster_snapshot_interval": snapshot_interval}


def capacity_for(n: int, batch: int) -> int:
    return max(n + 1000, math.ceil(n / (OVERLOADED_AT - 0.1)) + batch)


class Stalled(Gone):
    """Vectors were missing and none more was inserted for ``--stall-s`` (a
    ``Gone``: ``wait_for`` stops at once)."""


_names = itertools.count()


def fresh(prefix: str) -> str:
    """A cluster or host name not used before in this run (a retried
    measurement must not publish into the stream of the one it replaces)."""
    return f"{prefix}{next(_names)}"


def wait_inserted(host: Host, count, n: int, args, what: str, also=lambda: True) -> None:
    """Poll until ``count()`` reaches ``n`` and ``also()`` holds, saying how far
    it got every 30 s. ``Stalled`` when the count stays put for ``--stall-s``;
    ``BenchError`` after ``--timeout``."""
    t0 = time.monotonic()
    seen = {"count": -1, "moved": t0, "said": t0}

    def reached():
        ok = also()
        got, now = count(), time.monotonic()
        if got != seen["count"]:
            seen["count"], seen["moved"] = got, now
        elif got < n and now - seen["moved"] >= args.stall_s:
            stopped = [m for _, m in host.log_lines("applier stopped")]
            raise Stalled(f"{what}: {got:,} of {n:,} inserted and none more for {args.stall_s:g} s; "
                          f"{host.name} logged {stopped or 'no stopped applier'}")
        if now - seen["said"] >= 30:
            seen["said"] = now
            print(f"  {what}: {got:,} of {n:,} inserted after {now - t0:.0f} s", flush=True)
        return ok and got >= n
    try:
        wait_for(reached, args.timeout, POLL_S, f"{n} vectors inserted ({what})")
    except WaitTimeout as exc:
        raise BenchError(f"{exc}: {count()} of {n}") from None


def retrying(measure, incidents: list, what: str):
    """``measure()``; once more if it stalled (recorded in ``incidents``)."""
    try:
        return measure()
    except Stalled as exc:
        print(f"{what} stalled, measuring it again: {exc}", flush=True)
        incidents.append({"what": what, "stalled": str(exc)})
        return measure()


# -- client ---------------------------------------------------------------------------------
def send(target: str, plan: list[tuple[str, int, int]], ids: np.ndarray, vecs: np.ndarray) -> dict:
    """Send ``plan`` (space, lo, hi) in order, one batch in flight; sessions are
    opened before the clock starts. Times are ``time.perf_counter``."""
    spaces = sorted({s for s, _, _ in plan})
    lat = []
    with Client(target) as c, contextlib.ExitStack() as stack:
        sessions = {s: stack.enter_context(c.stream(s)) for s in spaces}
        t0 = time.perf_counter()
        for space, lo, hi in plan:
            t = time.perf_counter()
            ack = sessions[space].send(ids[lo:hi], vecs[lo:hi])
            lat.append(time.perf_counter() - t)
            if ack.accepted != hi - lo:
                raise BenchError(f"the gateway refused part of a batch: {ack}")
        t1 = time.perf_counter()
    lat_ms = np.array(lat) * 1000
    return {"t0": t0, "t_acked": t1, "batches": len(plan),
            "ack_ms_p50": round(float(np.percentile(lat_ms, 50)), 3),
            "ack_ms_p99": round(float(np.percentile(lat_ms, 99)), 3)}


def round_robin(spaces: list[str], n: int, batch: int) -> list[tuple[str, int, int]]:
    return [(spaces[i % len(spaces)], lo, min(lo + batch, n)) for i, lo in enumerate(range(0, n, batch))]


def proc_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class CpuWindow:
    """CPU seconds by role over a window: the host's processes (by title),
    nats-server, this process (the client), and the rest of the machine."""

    def __init__(self, host: Host, nats: NatsCluster):
        self.host, self.nats_pid = host, nats.procs[0].pid
        self.start = self._now()

    def _now(self) -> tuple[dict, float]:
        roles = self.host.cpu()
        roles["nats-server"] = proc_cpu(self.nats_pid)
        roles["client (bench process)"] = proc_cpu(os.getpid())
        return roles, ingest.host_busy_s()

    def close(self, seconds: float, vectors: int, workers: int) -> dict:
        (r0, b0), (r1, b1) = self.start, self._now()
        cpu = {k: round(r1.get(k, 0.0) - r0.get(k, 0.0), 2) for k in sorted(set(r0) | set(r1))}
        capacity = len(ingest.usable_cpus()) * seconds
        return {"cpu_s": cpu, "cpu_ms_per_1k": {k: round(v * 1e6 / vectors, 1) for k, v in cpu.items()},
                "worker_busy_share": round(cpu.get("worker", 0.0) / (workers * seconds), 3),
                "other_load_share": round(max(0.0, (b1 - b0) - sum(cpu.values())) / capacity, 3)}


# -- 1. ingest: local gateway against the log ----------------------------------------------------
def ingest_once(args, kind: str, nats: NatsCluster, hosts: Hosts, workdir: str, data) -> dict:
    """One fresh host (a new cluster for ``cluster``) ingests ``data``."""
    ids, vecs, plan = data
    n = len(ids)
    flags = engine_flags(args, args.workers, capacity_for(n, args.batch))
    cluster = None
    if kind == "cluster":
        cluster = fresh("ing")
        flags.update(cluster_flags(args, nats, cluster, "h0", args.ingest_lease_ttl))
    host = hosts.add(Host(workdir, flags)).start()
    try:
        if cluster:  # every partition held before the clock starts
            wait_for(lambda: len(host.owned()) == args.partitions, 60, 0.05, "all partitions held")
        window = CpuWindow(host, nats)
        sent = send(host.target, plan, ids, vecs)
        wait_inserted(host, host.total, n, args, f"{kind} ingest")
        t_done = time.perf_counter()
        acked_s, applied_s = sent["t_acked"] - sent["t0"], t_done - sent["t0"]
        cpu = window.close(applied_s, n, args.workers)
        if host.total() != n:
            raise BenchError(f"{kind}: {host.total()} vectors inserted, expected {n}")
    finally:
        hosts.stop(host)
    return {"kind": kind, "cluster": cluster, "n": n, "acked_s": round(acked_s, 3), "applied_s": round(applied_s, 3),
            "acked_per_s": round(n / acked_s), "applied_per_s": round(n / applied_s),
            "ack_ms_p50": sent["ack_ms_p50"], "ack_ms_p99": sent["ack_ms_p99"], **cpu}


def measure_ingest(args, nats, hosts: Hosts, workdir: str, incidents: list) -> tuple[dict, str]:
    """Returns the result and the name of the last cluster measured (its stream holds the data set)."""
    rng = np.random.default_rng(SEED + args.dim)
    vecs = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    ids = np.arange(args.n, dtype=np.uint64)
    spaces = [f"bench-{i:02d}" for i in range(args.spaces)]
    data = (ids, vecs, round_robin(spaces, args.n, args.batch))
    runs: dict[str, list] = {"local": [], "cluster": []}
    last_cluster = ""
    for r in range(args.repeats):
        for kind in (("local", "cluster") if r % 2 == 0 else ("cluster", "local")):
            res = retrying(lambda: ingest_once(args, kind, nats, hosts, workdir, data), incidents,
                           f"ingest {kind} repeat {r}")
            res["repeat"] = r
            runs[kind].append(res)
            last_cluster = res["cluster"] or last_cluster
            print(f"ingest {kind:<7} repeat {r}: acked {res['acked_per_s']:>9,}/s  applied "
                  f"{res['applied_per_s']:>7,}/s  ack p50 {res['ack_ms_p50']} ms  workers busy "
                  f"{res['worker_busy_share']:.2f}  other load {res['other_load_share']:.2f}  cpu {res['cpu_s']}",
                  flush=True)
    med = {k: {"acked_per_s": round(statistics.median(x["acked_per_s"] for x in v)),
               "applied_per_s": round(statistics.median(x["applied_per_s"] for x in v))} for k, v in runs.items()}
    ratios = {"acked_cluster_over_local": round(med["cluster"]["acked_per_s"] / med["local"]["acked_per_s"], 3),
              "applied_cluster_over_local": round(med["cluster"]["applied_per_s"] / med["local"]["applied_per_s"], 3)}
    return {"workers": args.workers, "pinned": True, "spaces": spaces, "batch": args.batch, "n": args.n,
            "dim": args.dim, "lease_ttl": args.ingest_lease_ttl, "runs": runs, "median": med,
            "ratios": ratios}, last_cluster


# -- 2. apply from the log ------------------------------------------------------------------------
def measure_apply(args, nats, hosts: Hosts, workdir: str, cluster: str, local_applied: float) -> dict:
    """A fresh host of ``cluster`` (whose stream holds ``--n`` vectors) applies it all."""
    flags = engine_flags(args, args.workers, capacity_for(args.n, args.batch))
    flags.update(cluster_flags(args, nats, cluster, fresh("apply"), args.ingest_lease_ttl))
    host = hosts.add(Host(workdir, flags))
    try:
        host.start()
        t_ready = time.time()
        # The window opens at ready; the first lease normally comes later (the
        # previous host's leases run out first), else the result says by how much.
        window = CpuWindow(host, nats)
        wait_inserted(host, host.total, args.n, args, "apply")
        t_done = time.time()
        if host.total() != args.n:
            raise BenchError(f"apply: {host.total()} vectors inserted, expected {args.n}")
        acquired = host.log_events("acquired with epoch")
        caught_up = host.log_events("caught up at stream sequence")
        if not acquired:
            raise BenchError("apply: no lease acquisition in the host's log")
        t_start = min(acquired)
        res = {"n": args.n, "workers": args.workers, "spawn_to_ready_s": round(t_ready - host.started, 3),
               "spawn_to_first_lease_s": round(t_start - host.started, 3),
               "first_to_last_lease_s": round(max(acquired) - t_start, 3),
               "first_lease_to_all_queued_s": round(max(caught_up) - t_start, 3) if caught_up else None,
               "first_lease_to_all_inserted_s": round(t_done - t_start, 3),
               "applied_per_s": round(args.n / (t_done - t_start))}
        res.update(window.close(t_done - t_start, args.n, args.workers))
        if t_start < t_ready:  # the rate holds (timed from the log); the CPU figures miss the start
            res["cpu_window_opened_late_s"] = round(t_ready - t_start, 3)
        res["apply_over_local_ingest"] = round(res["applied_per_s"] / local_applied, 3)
    finally:
        hosts.stop(host)
    print(f"apply from the log: {res['applied_per_s']:,}/s ({res['first_lease_to_all_inserted_s']} s for "
          f"{args.n:,}; all queued after {res['first_lease_to_all_queued_s']} s; spawn to first lease "
          f"{res['spawn_to_first_lease_s']} s)  workers busy {res['worker_busy_share']:.2f}  other load "
          f"{res['other_load_share']:.2f}  cpu {res['cpu_s']}", flush=True)
    return res


# -- 3. failover -------------------------------------------------------------------------------------
def failover_once(args, nats, hosts: Hosts, workdir: str, size: int, snapshot: bool) -> dict:
    cluster = fresh(f"fo{size}{'s' if snapshot else 'n'}x")
    interval = args.snapshot_interval if snapshot else 0.0
    flags = engine_flags(args, 1, capacity_for(size, args.batch), pin=False)
    pair = [hosts.add(Host(workdir, dict(flags, **cluster_flags(args, nats, cluster, h, args.lease_ttl, interval))))
            for h in ("victim", "survivor")]
    victim, survivor = pair
    try:
        for h in pair:  # both spawned before either is waited for
            h.started = time.time()
            h.inst.start(wait=False)
        for h in pair:
            try:
                h.inst.wait_ready(120, workers=True)
            except AssertionError as exc:
                raise BenchError(str(exc)) from None
        wait_for(lambda: (len(victim.owned()) + len(survivor.owned()) == args.partitions
                          and victim.owned() and survivor.owned()), 90, 0.05, "partitions spread over 2 hosts")
        mine = victim.owned()
        space = next(f"fo-{i:04d}" for i in range(10_000) if names.partition_of(f"fo-{i:04d}", args.partitions) in mine)
        p = names.partition_of(space, args.partitions)
        rng = np.random.default_rng(SEED + size)
        vecs = rng.standard_normal((size, args.dim), dtype=np.float32)
        ids = np.arange(size, dtype=np.uint64)
        t = time.perf_counter()
        send(survivor.target, round_robin([space], size, args.batch), ids, vecs)
        wait_inserted(victim, lambda: victim.counts().get(space, 0), size, args, "the victim's load")
        load_s = time.perf_counter() - t
        snap_wait_s, snap_seq = None, int(victim.rows()[p, P_SNAP_SEQ])
        if snapshot:
            t = time.perf_counter()

            def covered():
                rows = victim.rows()
                return int(rows[p, P_SNAP_SEQ]) > 0 and int(rows[p, P_SNAP_SEQ]) >= int(rows[p, P_STREAM_LAST])
            wait_for(covered, 120, 0.05, "a snapshot covering the partition")
            snap_wait_s = round(time.perf_counter() - t, 3)
            snap_seq = int(victim.rows()[p, P_SNAP_SEQ])
        victim.alive()
        window = CpuWindow(survivor, nats)
        t_kill = time.perf_counter()
        victim.kill9()
        marks: dict[str, float] = {}

        def serving():
            rows = survivor.rows()
            now = time.perf_counter()
            if int(rows[p, P_EPOCH]) and "lease" not in marks:
                marks["lease"] = now
            if int(rows[p, P_EPOCH]) and int(rows[p, P_STATE]) == SERVING and "serving" not in marks:
                marks["serving"] = now
            return "serving" in marks
        wait_inserted(survivor, lambda: survivor.counts().get(space, 0), size, args, "the survivor's replay",
                      also=serving)
        t_done = time.perf_counter()
        held = survivor.counts().get(space, 0)
        if held != size:
            raise BenchError(f"failover: the survivor holds {held} of {size}")
        loaded = survivor.log_events(f"partition {p}: loaded snapshot")
        if snapshot and not loaded:
            raise BenchError(f"failover: the survivor loaded no snapshot of partition {p}")
        res = {"size": size, "snapshot": snapshot, "partition": p, "space": space, "snapshot_seq": snap_seq,
               "victim_load_s": round(load_s, 3), "snapshot_wait_s": snap_wait_s,
               "kill_to_lease_s": round(marks["lease"] - t_kill, 3),
               "kill_to_serving_s": round(marks["serving"] - t_kill, 3),
               "failover_s": round(t_done - t_kill, 3),
               "replay_s": round(t_done - marks["lease"], 3),
               "replay_per_s": round(size / (t_done - marks["lease"]))}
        res.update(window.close(t_done - t_kill, size, 1))
    finally:
        for h in pair:
            hosts.stop(h)
    print(f"failover {size:>6,} vectors, {'snapshot   ' if snapshot else 'no snapshot'}: {res['failover_s']:6.2f} s "
          f"(lease after {res['kill_to_lease_s']:.2f} s, serving after {res['kill_to_serving_s']:.2f} s, "
          f"replay {res['replay_per_s']:,}/s; other load {res['other_load_share']:.2f})", flush=True)
    return res


def measure_failover(args, nats, hosts: Hosts, workdir: str, incidents: list) -> list[dict]:
    rows = []
    for size in args.sizes:
        for snapshot in (False, True):
            rows.append(retrying(lambda: failover_once(args, nats, hosts, workdir, size, snapshot), incidents,
                                 f"failover {size} {'with' if snapshot else 'without'} snapshot"))
    return rows


# -- output --------------------------------------------------------------------------------------------
def plot(rows: list[dict], path: str, ttl: float) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for snap, label, marker in ((False, "no snapshot (replay the stream)", "o"),
                                (True, "snapshot uploaded before the kill", "s")):
        pts = sorted((r["size"], r["failover_s"]) for r in rows if r["snapshot"] == snap)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, label=label)
    ax.axhline(ttl, color="grey", linestyle=":", label=f"lease ttl ({ttl:g} s)")
    ax.set_xlabel("vectors in the partition")
    ax.set_ylabel("kill -9 of the owner -> survivor holds all (s)")
    ax.set_title("Failover time against partition size")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def summary(result: dict) -> str:
    out = []
    ing = result.get("ingest")
    if ing:
        m, r = ing["median"], ing["ratios"]
        out += [f"\ningest {ing['n']:,} x {ing['dim']} ({len(ing['spaces'])} spaces, batches of {ing['batch']}, "
                f"{ing['workers']} workers), median of {len(ing['runs']['local'])}:",
                f"{'':>9} {'acked/s':>10} {'applied/s':>10}",
                f"{'local':>9} {m['local']['acked_per_s']:>10,} {m['local']['applied_per_s']:>10,}",
                f"{'cluster':>9} {m['cluster']['acked_per_s']:>10,} {m['cluster']['applied_per_s']:>10,}",
                f"{'ratio':>9} {r['acked_cluster_over_local']:>10.3f} {r['applied_cluster_over_local']:>10.3f}"]
    ap = result.get("apply")
    if ap:
        out.append(f"\napply from the log: {ap['applied_per_s']:,}/s ({ap['apply_over_local_ingest']:.3f} of "
                   f"local ingest)")
    fo = result.get("failover")
    if fo:
        out.append(f"\n{'size':>7} {'snapshot':>9} {'lease':>7} {'serving':>8} {'all held':>9}")
        for r in fo:
            out.append(f"{r['size']:>7,} {'yes' if r['snapshot'] else 'no':>9} {r['kill_to_lease_s']:>7.2f} "
                       f"{r['kill_to_serving_s']:>8.2f} {r['failover_s']:>9.2f}")
    return "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="vectors of the ingest and apply runs")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--spaces", type=int, default=8)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workers", type=int, default=2, help="workers of the ingest and apply hosts")
    p.add_argument("--repeats", type=int, default=2, help="ingest runs per side (order alternates)")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--lease-ttl", type=float, default=3.0, help="lease ttl of the failover runs")
    p.add_argument("--ingest-lease-ttl", type=float, default=10.0,
                   help="lease ttl of the ingest and apply hosts (the engine's default)")
    p.add_argument("--stall-s", type=float, default=60.0,
                   help="a wait in which no vector more is inserted for this long counts as stalled: "
                        "the measurement is recorded as an incident and run again once")
    p.add_argument("--sizes", default="5000,20000,50000", help="failover partition sizes")
    p.add_argument("--snapshot-interval", type=float, default=1.0,
                   help="--cluster-snapshot-interval of the failover runs with a snapshot")
    p.add_argument("--parts", default="ingest,apply,failover")
    p.add_argument("--timeout", type=float, default=300.0, help="longest wait for one ingest, apply or failover")
    p.add_argument("--out", default=None)
    p.add_argument("--logs", default=None, help="keep every host's log in this folder")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.parts = set(args.parts.split(","))
    if "apply" in args.parts and "ingest" not in args.parts:
        p.error("--parts apply needs ingest (it applies the stream the ingest run wrote)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, ingest._interrupt)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cluster.json")
    result = {"benchmark": "cluster", "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(), "parameters": {k: sorted(v) if isinstance(v, set) else v
                                                                for k, v in vars(args).items()},
              "nats_server": subprocess.run(["nats-server", "--version"], capture_output=True,
                                            text=True).stdout.strip(),
              "loadavg_before": loadavg()}
    print(f"loadavg before: {result['loadavg_before']}", flush=True)
    hosts = Hosts(args.logs)
    incidents = result["incidents"] = []
    workdir = tempfile.mkdtemp(prefix="engram-clusterbench-")
    nats = NatsCluster(Path(workdir), 1)
    t_start = time.monotonic()
    try:
        nats.start()
        if "ingest" in args.parts:
            result["ingest"], last_cluster = measure_ingest(args, nats, hosts, workdir, incidents)
            if "apply" in args.parts:
                local = result["ingest"]["median"]["local"]["applied_per_s"]
                result["apply"] = retrying(lambda: measure_apply(args, nats, hosts, workdir, last_cluster, local),
                                           incidents, "apply")
        if "failover" in args.parts:
            result["failover"] = measure_failover(args, nats, hosts, workdir, incidents)
    finally:
        hosts.stop_all()
        nats.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["loadavg_after"] = loadavg()
    left = hosts.left + [o for name in hosts.names for o in instance_objects(name)]
    result["shm_left"] = sorted({f"{kind} {obj}" for kind, obj in left})
    print(f"loadavg after: {result['loadavg_after']}; shared memory left: {result['shm_left'] or 'none'}")
    print(summary(result))
    if result.get("failover"):
        result["plot"] = os.path.basename(plot(result["failover"], os.path.splitext(out)[0] + ".png",
                                               args.lease_ttl) or "")
    ingest.write_result(result, "cluster", args.workers, out)
    return 0 if not result["shm_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
