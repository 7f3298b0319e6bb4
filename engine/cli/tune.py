"""``engram-stream tune``: measure this host, recommend ``--workers-per-core``.

For each candidate (0.5, 1 and, where the usable CPUs have SMT siblings, 2
workers per core) it starts a temporary instance of its own (unique name,
temporary data directory, the configured dim/metric/M/ef, no gateway,
metrics on a free port), ingests random vectors for ``--seconds``, keeping
a bounded backlog per worker (``QUEUED_PER_WORKER``) so the workers never
idle and latencies are not just the time to drain a full queue, while recalling every ``RECALL_EVERY_S``, stops it,
and prints throughput, observation p99, recall p99 and CPU use. The
recommendation is the step with the highest throughput; steps within 5 %
of it are decided by the lower observation p99. ``--write FILE`` writes a
TOML file that ``run --config FILE`` accepts.

Progress goes to stderr (``Progress``): a redrawn bar only on a terminal, and
one line per finished step with its figures (``step_line``) everywhere.

Usable CPUs honour the process's affinity (``sched_getaffinity``, so
cpusets) and a cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

from engine.errors import EngineError

RECALL_EVERY_S = 0.05
BATCH = 500
QUEUED_PER_WORKER = 4 * BATCH  # the backlog the ingest keeps per worker
START_TIMEOUT_S = 60.0


def cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs allowed by a cgroup v2 quota, or None without one."""
    try:
        quota, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def usable_cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))
    quota = cgroup_cpus()
    if quota is not None:
        cpus = cpus[:max(1, math.ceil(quota))]
    return cpus


def has_smt(cpus: list[int]) -> bool:
    for c in cpus:
        try:
            siblings = open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read().strip()
        except OSError:
            continue
        if "," in siblings or "-" in siblings:
            return True
    return False


def steps(cpus: list[int]) -> list[float]:
    return [0.5, 1.0] + ([2.0] if has_smt(cpus) else [])


def _p99(values) -> float | None:
    return float(np.percentile(values, 99)) if len(values) else None


def measure(cfg, wpc: float, cpus: list[int], progress) -> dict:
    """One step: a temporary instance with ``wpc`` workers per core, loaded for ``cfg.seconds``."""
    from engine.producer.api import connect
    from metrics import readout
    import psutil
    workers = max(1, round(len(cpus) * wpc))
    name = f"tune{os.getpid()}x{uuid.uuid4().hex[:6]}"
    tmp = tempfile.mkdtemp(prefix="engram-tune-")
    args = [sys.executable, "-m", "engine", "run", "--name", name, "--data-dir", os.path.join(tmp, "data"),
            "--workers", str(workers), "--cpus", ",".join(map(str, cpus)), "--dim", str(cfg.dim),
            "--metric", cfg.metric, "--hnsw-m", str(cfg.hnsw_m), "--ef-construction", str(cfg.ef_construction),
            "--ef-search", str(cfg.ef_search), "--grpc-addr", "off", "--metrics-addr", "127.0.0.1:0",
            "--fsync", "never", "--autotune", "off", "--log-level", "warning"]
    log = open(os.path.join(tmp, "engine.log"), "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    eng = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise EngineError(f"tune: the temporary instance exited with {proc.returncode}")
            try:
                eng = connect(name)
                if eng.inst.header.ready:
                    break
                eng.close()
                eng = None
            except EngineError:
                pass
            if time.monotonic() > deadline:
                raise EngineError("tune: the temporary instance did not start in time")
            time.sleep(0.1)
        rng = np.random.default_rng(7)
        pool = rng.standard_normal((BATCH * 8, cfg.dim)).astype(np.float32)
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in tree)
        before = eng.inst.metrics.snapshot()
        start = time.monotonic()
        inserted0 = int(eng.inst.shard_counts.sum())
        next_id, next_recall, recalls = 0, start, []
        while (now := time.monotonic()) - start < cfg.seconds:
            progress((now - start) / cfg.seconds)
            if sum(eng.inst.queued_by_lane()) > workers * QUEUED_PER_WORKER:
                time.sleep(0.002)  # calibrated: keep a bounded backlog, so latency means something
                continue
            lo = (next_id // BATCH % 8) * BATCH
            ack = eng.observe("default", np.arange(next_id, next_id + BATCH, dtype=np.uint64), pool[lo:lo + BATCH])
            next_id += ack.accepted
            if ack.accepted < BATCH:
                time.sleep(0.002)  # admission is full: the workers are the bottleneck
            if now >= next_recall and next_id:
                t0 = time.perf_counter()
                eng.recall("default", pool[0], k=10)
                recalls.append(time.perf_counter() - t0)
                next_recall = now + RECALL_EVERY_S
        elapsed = time.monotonic() - start
        inserted = int(eng.inst.shard_counts.sum()) - inserted0
        cpu = sum(sum(p.cpu_times()[:2]) for p in tree if p.is_running()) - cpu0
        delta = eng.inst.metrics.snapshot() - before
        bounds, counts, _ = readout.histogram(eng.inst.metrics, delta, "observation_latency_seconds")
        progress(1.0)
        return {"workers_per_core": wpc, "workers": workers, "throughput": inserted / elapsed,
                "observation_p99_s": readout.quantile(bounds, counts, 0.99), "recall_p99_s": _p99(recalls),
                "cpu_use": cpu / (elapsed * len(cpus))}
    finally:
        if eng is not None:
            eng.close()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        log.close()
        from shm.segment import remove_instance_objects
        remove_instance_objects(name)
        shutil.rmtree(tmp, ignore_errors=True)


def recommend(results: list[dict]) -> dict:
    best = max(r["throughput"] for r in results)
    close = [r for r in results if r["throughput"] >= 0.95 * best]
    return min(close, key=lambda r: (r["observation_p99_s"] or math.inf, -r["throughput"]))


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1000:.1f} ms"


def table(results: list[dict]) -> str:
    rows = [f"{'workers/core':>12}  {'workers':>7}  {'throughput':>12}  {'obs p99':>10}  {'recall p99':>10}  "
            f"{'cpu use':>7}"]
    for r in results:
        rows.append(f"{r['workers_per_core']:>12g}  {r['workers']:>7}  {r['throughput']:>10.0f}/s  "
                    f"{_ms(r['observation_p99_s']):>10}  {_ms(r['recall_p99_s']):>10}  {r['cpu_use']:>7.0%}")
    return "\n".join(rows)


def toml_text(cfg, best: dict) -> str:
    return (f"# written by engram-stream tune on {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            f'workers = "auto"\nworkers-per-core = {best["workers_per_core"]}\n'
            f'dim = {cfg.dim}\nmetric = "{cfg.metric}"\nhnsw-m = {cfg.hnsw_m}\n'
            f"ef-construction = {cfg.ef_construction}\nef-search = {cfg.ef_search}\n")


def step_line(i: int, total: int, r: dict) -> str:
    """One finished step with its figures (what the table's row for it shows)."""
    workers = f"{r['workers']} worker" + ("" if r["workers"] == 1 else "s")
    return (f"step {i + 1}/{total}: {r['workers_per_core']:g} per core ({workers}): {r['throughput']:.0f}/s, "
            f"obs p99 {_ms(r['observation_p99_s'])}, "
            f"recall p99 {_ms(r['recall_p99_s'])}, cpu use {r['cpu_use']:.0%}")


class Progress:
    """Progress of the steps on ``err``.

    On a terminal: a bar redrawn in place while a step runs, replaced by the
    step's figures when it ends. Otherwise (a pipe, a log file, CI) only the
    line with the figures of each finished step: a redrawn bar would fill a
    log with carriage returns or repeated lines.
    """

    WIDTH = 30

    def __init__(self, err, total: int):
        self.err, self.total = err, total
        self.tty = err.isatty()
        self._shown = None  # (filled cells, step) last drawn

    def running(self, i: int, wpc: float, frac: float) -> None:
        if not self.tty:
            return
        done = int(self.WIDTH * (i + frac) / self.total)
        if (done, i) == self._shown:
            return  # redraw only on change
        self._shown = (done, i)
        self.err.write(f"\r[{'#' * done}{'.' * (self.WIDTH - done)}] step {i + 1}/{self.total}: "
                       f"{wpc:g} per core")
        self.err.flush()

    def finished(self, i: int, result: dict) -> None:
        # "\r" plus the erase-line sequence clear the bar the line replaces
        lead = "\r\x1b[K" if self.tty else ""
        self.err.write(f"{lead}{step_line(i, self.total, result)}\n")
        self.err.flush()


def run(cfg, out=sys.stdout, err=sys.stderr) -> int:
    cpus = usable_cpus()
    plan = steps(cpus)
    print(f"tune: {len(cpus)} usable CPU(s) {cpus}, dim {cfg.dim} {cfg.metric}, {cfg.seconds:g}s per step, "
          f"workers per core {', '.join(f'{w:g}' for w in plan)}", file=err)
    results = []
    shown = Progress(err, len(plan))
    for i, wpc in enumerate(plan):
        results.append(measure(cfg, wpc, cpus, lambda frac, i=i, wpc=wpc: shown.running(i, wpc, frac)))
        shown.finished(i, results[-1])
    best = recommend(results)
    print(table(results), file=out)
    print(f"recommended: --workers-per-core {best['workers_per_core']:g}", file=out)
    if cfg.write:
        with open(cfg.write, "w") as fh:
            fh.write(toml_text(cfg, best))
        print(f"wrote {cfg.write} (engram-stream run --config {cfg.write})", file=out)
    return 0
