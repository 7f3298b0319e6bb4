"""The supervisor's side of the auto-tuner: sample, decide, publish. Never blocks.

Called from the arbiter loop once per tick (``AutoTune.tick(now)``):

* every tick: one cheap sample of "a worker asleep while another slot's
  rings hold work" (live records and ring counters, no lock);
* every ``SAMPLE_S``: one copy of the metric array; deltas of the
  histograms and counters since the last copy become an ``Evidence`` sample
  blended into the tuner's moving averages;
* every ``--autotune-interval``: ``Tuner.step``; each change goes to the
  live settings (``TunedRecord``, read by the workers before each batch),
  the audit log (``tune_log``, served at ``/api/v1/system/config``), the log
  and ``autotune_changes_total``.

Single writer of ``tuned`` and ``tune_log``: the supervisor, through here.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from engine.control import recallstate
from engine.control.instance import Instance
from engine.control.layouts import LANES
from engine.recallhealth.tuner import Evidence, Tuner
from metrics import readout

log = logging.getLogger("engram.autotune")

SAMPLE_S = 5.0


class AutoTune:
    def __init__(self, inst: Instance, metrics=None, clock=time.monotonic, wall=time.time,
                 sample_s: float = SAMPLE_S):
        p = inst.params
        self.inst = inst
        self.metrics = metrics
        self.wall = wall
        self.sample_s = min(sample_s, p.autotune_interval / 2)
        self.tuner = Tuner(p.batch_budget_ms, p.steal_threshold, p.autotune_interval, p.pinned)
        now = clock()
        self.next_sample = now + self.sample_s
        self.next_decision = now + p.autotune_interval
        self.prev: np.ndarray | None = None
        self.prev_at = now
        self.idle_hits = 0
        self.idle_looks = 0

    def tick(self, now: float) -> None:
        self.look_for_idle()
        if now >= self.next_sample:
            self.next_sample = now + self.sample_s
            self.sample(now)
        if now >= self.next_decision:
            self.next_decision = now + min(self.tuner.interval_s, self.sample_s)
            for change in self.tuner.step(now):
                self.apply(change)

    def look_for_idle(self) -> None:
        inst = self.inst
        depth = [sum(inst.ring(s, lane).depth() for lane in range(len(LANES))) for s in range(inst.slots)]
        sleeping = inst.live_column("sleeping")
        for s in range(inst.slots):
            self.idle_looks += 1
            if sleeping[s] and any(d > 0 for o, d in enumerate(depth) if o != s):
                self.idle_hits += 1

    def sample(self, now: float) -> None:
        arr = self.inst.metrics
        snap = arr.snapshot()
        prev, self.prev = self.prev, snap
        dt, self.prev_at = now - self.prev_at, now
        idle = self.idle_hits / self.idle_looks if self.idle_looks else None
        self.idle_hits = self.idle_looks = 0
        if prev is None or dt <= 0:
            return
        delta = snap - prev
        ev = {"idle_with_work": idle}
        lat = _mean(arr, delta, "observation_latency_seconds")
        ev["latency_s"], ev["wait_s"] = lat, _mean(arr, delta, "queue_wait_time_seconds")
        ev["batch_items"] = _mean(arr, delta, "batch_size")
        util = readout.block(arr, snap, "worker_utilization_ratio").ravel()
        ev["utilization"] = float(util.mean()) if len(util) else None
        items = float(readout.block(arr, delta, "observations_total").sum())
        if items > 0 and util.sum() > 0:
            ev["item_s"] = float(util.sum()) * dt / items
        batches = float(readout.block(arr, delta, "batches_processed_total").sum())
        if batches > 0:
            ev["steal_share"] = min(1.0, float(readout.block(arr, delta, "work_stolen_total").sum()) / batches)
        if items > 0:  # no traffic: no evidence (idle engines keep their settings)
            self.tuner.observe(Evidence(**ev))

    def apply(self, change) -> None:
        t = recallstate.tuned(self.inst)
        if change.setting == "batch_budget_ms":
            t.batch_budget_ms = change.new
        else:
            t.steal_threshold = int(change.new)
        t.generation = int(t.generation) + 1
        t.changed = self.wall()
        recallstate.append_tune_log(self.inst, {
            "time": round(self.wall(), 3), "setting": change.setting, "old": change.old, "new": change.new,
            "predicted_gain": round(change.gain, 3), "evidence": change.evidence})
        if self.metrics is not None:
            self.metrics.inc("autotune_changes_total", setting=change.setting)
        log.info("autotune: %s %g -> %g (predicted improvement %.0f%%; %s)", change.setting, change.old,
                 change.new, change.gain * 100, change.evidence)


def _mean(arr, delta: np.ndarray, name: str) -> float | None:
    _bounds, counts, total = readout.histogram(arr, delta, name)
    n = float(counts.sum())
    return total / n if n > 0 else None
