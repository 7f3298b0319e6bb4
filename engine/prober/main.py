"""The recall prober process: known queries to every worker slot, every ``--probe-interval``.

::

    every probe_interval:  ask all slots (PROBE_SPACE, through the query slots)
        → per slot: wrong answer? slower than --probe-budget-ms? no answer?
        → hysteresis (engine.recallhealth.probe) → ProbeRecord (control block)
        → the slot's breaker, like any recall's outcome (engine.recallhealth.board)
        → metrics: latency histogram, failures by reason (a leased producer row)

Why a process of its own: the exporter only reads shared memory (DESIGN §3)
and the supervisor must not block on a recall; a probe is a recall like a
client's, so it goes through the same query slots and the same workers'
``serve_pending`` and measures what clients meet. Single writer of the
probe records: this process (``ProbeRecord``). It waits up to twice the
budget for an answer, so a slow slot's latency is still measured; a probe
answered after the budget is a ``timeout``, one answered with other ids a
``wrong_answer``.

The prober bypasses open breakers (it must see a slot recover) but asks
``admit`` first, so an open breaker whose cool-down is over goes half-open
even with no client traffic, and a good probe closes it.
"""

from __future__ import annotations

import logging
import os
import time

from engine import child, identity
from engine.control import recallstate
from engine.control.instance import Instance
from engine.control.query import PROBE_SPACE, QueryClient
from engine.control.records import PROBE_OK, PROBE_TIMEOUT, PROBE_WRONG_ANSWER, PROBER
from engine.recallhealth import probe
from engine.recallhealth.board import BreakerBoard
from engine.recallhealth.probeset import PROBE_VECTORS, ProbeSet

log = logging.getLogger("engram.prober")

WAIT_BUDGETS = 2.0  # an unanswered probe is given up after this many budgets


class Prober:
    def __init__(self, inst: Instance, writer=None, clock=time.monotonic, wall=time.time):
        p = inst.params
        self.inst = inst
        self.clock = clock
        self.wall = wall
        self.budget_s = p.probe_budget_ms / 1000.0
        self.set = ProbeSet.build(p.dim, p.metric)
        n = min(len(self.set.queries), p.query_batch)
        self.queries, self.expected = self.set.queries[:n], self.set.expected[:n, :min(3, p.max_k)]
        self.client = QueryClient(inst)
        self.writer = writer
        self.board = BreakerBoard(inst, self._metric, clock=clock, enabled=p.breaker == "on")
        self.states = [probe.ProbeState(int(recallstate.probe(inst, s).state)) for s in range(inst.slots)]

    def _metric(self, fn) -> None:
        if self.writer is not None:
            fn(self.writer)

    def probe_all(self) -> dict[int, tuple[int, float]]:
        """Probe every slot once; returns ``{slot: (reason, latency s)}``."""
        slots = list(range(self.inst.slots))
        self.board.admit(slots, count=False)
        answered: dict = {}
        wait = WAIT_BUDGETS * self.budget_s
        self.client.ask(PROBE_SPACE, self.queries, self.expected.shape[1], PROBE_VECTORS, slots,
                        self.clock() + wait, answered)
        out = {}
        for s in slots:
            if s not in answered:
                out[s] = (PROBE_TIMEOUT, wait)
                continue
            latency, (ids, _dist) = answered[s]
            if ids.shape != self.expected.shape or not (ids == self.expected).all():
                out[s] = (PROBE_WRONG_ANSWER, latency)
            else:
                out[s] = (PROBE_TIMEOUT if latency > self.budget_s else PROBE_OK, latency)
        self.board.record({s: self._breaker_outcome(r, lat, s in answered) for s, (r, lat) in out.items()})
        for s, (reason, latency) in out.items():
            self._publish(s, reason, latency)
        return out

    def _breaker_outcome(self, reason: int, latency: float, answered: bool) -> str | None:
        """What the breaker makes of a probe: its own failure rule (1.5 x budget), errors for wrong answers."""
        if reason == PROBE_WRONG_ANSWER:
            return "error"
        return self.board.classify(latency if answered else None)

    def _publish(self, slot: int, reason: int, latency: float) -> None:
        rec = recallstate.probe(self.inst, slot)
        prev = self.states[slot]
        new = self.states[slot] = probe.step(prev, reason == PROBE_OK)
        now = self.wall()
        rec.last_latency = latency
        rec.last_reason = reason
        if reason == PROBE_OK:
            rec.last_success = now
        else:
            rec.last_failure = now
        rec.failures, rec.successes, rec.probes = new.failures, new.successes, int(rec.probes) + 1
        rec.state = new.state  # written last: a reader seeing the state sees its details
        self._metric(lambda w: w.observe("recall_probe_latency_seconds", latency, worker_id=slot))
        if reason != PROBE_OK:
            name = "wrong_answer" if reason == PROBE_WRONG_ANSWER else "timeout"
            self._metric(lambda w: w.inc("recall_probe_failures_total", worker_id=slot, reason=name))
        if new.state != prev.state:
            names = probe.PROBE_STATE_NAMES
            level = logging.INFO if new.state <= probe.PROBE_HEALTHY else logging.WARNING
            log.log(level, "recall probe of worker slot %d: %s -> %s (last probe %s, %.1f ms)", slot,
                    names[prev.state], names[new.state], "ok" if reason == PROBE_OK else
                    ("wrong answer" if reason == PROBE_WRONG_ANSWER else "timeout"), latency * 1000)

    def run(self, keep_going) -> None:
        interval = self.inst.params.probe_interval
        next_at = self.clock()
        started = False  # probes begin once every slot has run (start-up is not a failure)
        while keep_going():
            now = self.clock()
            started = started or bool(self.inst.header.ready)
            if now >= next_at:
                if started and not self.inst.header.stop:
                    self.probe_all()
                next_at = max(next_at + interval, now)
            time.sleep(min(0.2, max(0.0, next_at - self.clock())))


def main(name: str, inherited: list[int] = (), supervisor_pid: int = 0) -> None:
    """Entry point in the forked child."""
    child.prepare(inherited, supervisor_pid)
    identity.become("prober", name)
    inst = Instance.attach(name, PROBER)
    from metrics.lease import ProducerRowLease
    lease = None if inst.params.no_metrics else ProducerRowLease(inst.metrics, inst.metrics_lock_path)
    try:
        prober = Prober(inst, None if lease is None else lease.writer)
        log.info("probing %d worker slot(s) every %.1fs (budget %.0f ms)", inst.slots,
                 inst.params.probe_interval, inst.params.probe_budget_ms)
        prober.run(lambda: os.getppid() == supervisor_pid or not supervisor_pid)
    finally:
        if lease is not None:
            lease.release()
        inst.close()
