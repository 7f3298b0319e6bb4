"""``engram-stream top``: a live view of one instance, refreshed in place.

Reads shared memory like ``status`` (nothing is asked of the engine): per
worker slot its pid, pinned CPU, the CPU it used (psutil), utilisation,
queue depth per lane, inserted/s, restarts and state; engine-wide inserted/s,
p99 latencies over the last refresh, backpressure and gateway sessions.

Terminal handling is plain ANSI (alternate screen, cursor home, clear), which
every terminal and ssh session understands; no curses, so nothing depends on
terminfo. On a terminal ``q`` quits (stdin in cbreak mode, restored on any
exit). When stdout is not a terminal, frames are printed one after another
without escape codes (``--count``, default 1), like ``top -b``.
"""

from __future__ import annotations

import os
import select
import sys
import time

import psutil

from engine.control.report import _quantiles, collect
from engine.control.layouts import LANES, LANE_INDEX
from engine.control.instance import Instance
from metrics import readout

ENTER, LEAVE, HOME_CLEAR = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l", "\x1b[H\x1b[2J"


class Sampler:
    """Turns two consecutive metric snapshots into one frame of rates."""

    def __init__(self, inst: Instance, clock=time.monotonic):
        self.inst = inst
        self.clock = clock
        self.prev = inst.metrics.snapshot()
        self.prev_t = clock()
        self.procs: dict[int, psutil.Process] = {}

    def _per_worker_inserted(self, snap) -> list[float]:
        p = self.inst.metrics.cellmap.placement("batch_size")
        b = readout.block(self.inst.metrics, snap, "batch_size").reshape(-1, p.width)
        return [float(row[len(p.bounds) + 1]) for row in b]  # the histogram's sum: observations inserted

    def _cpu_percent(self, pid: int | None) -> float | None:
        if not pid:
            return None
        proc = self.procs.get(pid)
        try:
            if proc is None:
                proc = self.procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only starts the measurement
                return None
            return proc.cpu_percent(None)
        except psutil.Error:
            self.procs.pop(pid, None)
            return None

    def frame(self) -> dict:
        inst = self.inst
        st = collect(inst, 0.0)
        snap, now = inst.metrics.snapshot(), self.clock()
        dt = max(now - self.prev_t, 1e-6)
        before, after = self._per_worker_inserted(self.prev), self._per_worker_inserted(snap)
        util = readout.block(inst.metrics, snap, "worker_utilization_ratio").reshape(-1)
        for w in st["workers"]:
            s = w["slot"]
            w["cpu_percent"] = self._cpu_percent(w["pid"])
            w["utilization"] = float(util[s]) if s < len(util) else None
            w["inserted_per_s"] = (after[s] - before[s]) / dt if s < len(after) else None
            w["depth"] = {lane: inst.ring(s, LANE_INDEX[lane]).depth() for lane in LANES}
        st["inserted_per_s"] = sum(after) - sum(before)
        st["inserted_per_s"] /= dt
        st["p99"] = {name: _quantiles(inst.metrics, self.prev, snap, name)["p99"]
                     for name in ("observation_latency_seconds", "recall_latency_seconds")}
        self.prev, self.prev_t = snap, now
        return st


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(st: dict, interval: float) -> list[str]:
    gw = st.get("gateway")
    lines = [
        f"engram top  instance {st['name']}  {st['state']}  backpressure {st['backpressure']} "
        f"(pressure {st['pressure']:.1%})  every {interval:g}s  q: quit",
        f"inserted {st['inserted_per_s']:.0f}/s  p99 observe {_ms(st['p99']['observation_latency_seconds'])}  "
        f"p99 recall {_ms(st['p99']['recall_latency_seconds'])}  "
        + (f"gateway sessions {gw['sessions']} (pid {gw['pid'] or 'down'})" if gw else "no gateway"),
        "",
        f"{'slot':>4} {'pid':>8} {'cpu':>4} {'%cpu':>6} {'util':>5} {'high':>7} {'normal':>7} {'low':>7} "
        f"{'ins/s':>8} {'restarts':>8}  state",
    ]
    for w in st["workers"]:
        d = w["depth"]
        lines.append(
            f"{w['slot']:>4} {w['pid'] or '-':>8} {','.join(map(str, w['cpus'])) or '-':>4} "
            f"{_num(w['cpu_percent'], '.0f'):>6} {_num(w['utilization'], '.0%'):>5} "
            f"{d['high']:>7} {d['normal']:>7} {d['low']:>7} {_num(w['inserted_per_s'], '.0f'):>8} "
            f"{w['restarts']:>8}  {w['state']}")
    q = st["queues"]
    lines.append(f"{'all':>4} {'':>8} {'':>4} {'':>6} {'':>5} {q['high']['depth']:>7} {q['normal']['depth']:>7} "
                 f"{q['low']['depth']:>7} {st['inserted_per_s']:>8.0f}")
    return lines


def _key_pressed(timeout: float) -> str:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return os.read(sys.stdin.fileno(), 32).decode(errors="replace") if ready else ""


def run(inst: Instance, interval: float, count: int) -> int:
    sampler = Sampler(inst)
    interactive = sys.stdout.isatty() and sys.stdin.isatty()
    if not interactive:
        count = count or 1
        for i in range(count):
            time.sleep(interval)  # the first frame's rates need one interval of samples
            print("\n".join(render(sampler.frame(), interval)), flush=True)
            if i + 1 < count:
                print()
        return 0
    import termios
    import tty
    saved = termios.tcgetattr(sys.stdin)
    shown = 0
    try:
        tty.setcbreak(sys.stdin.fileno())
        sys.stdout.write(ENTER)
        while True:
            if "q" in _key_pressed(interval).lower():
                return 0
            sys.stdout.write(HOME_CLEAR + "\r\n".join(render(sampler.frame(), interval)))
            sys.stdout.flush()
            shown += 1
            if count and shown >= count:
                return 0
    finally:
        sys.stdout.write(LEAVE)
        sys.stdout.flush()
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
