"""The breakers of every worker slot, shared by all processes that recall.

Where the state lives: in the control block (``breaker`` and
``breaker_ring``, ``engine.control.layouts``), not in each producer. A slot
that stops answering opens its breaker once for every producer on the host
(the gateway, ``engine.connect`` clients, the prober) instead of each of
them paying ``min_samples`` missed deadlines to find out, and the
``breaker`` command can force one open or closed for all of them.

Concurrency: every read-modify-write of a slot's record and ring is made
holding fcntl byte ``LOCK_BREAKER`` (kernel-released if the holder dies; one
byte for the whole table: a critical section is a few array stores). The
fast path of ``admit`` reads the state without the lock: a stale CLOSED lets
one more request through, which the deadline bounds anyway.

Each process logs and counts the transitions it makes itself, in its own
metric row (``record_metric``).
"""

from __future__ import annotations

import logging
import time

from engine.control import recallstate
from engine.control.instance import Instance
from engine.control.layouts import LOCK_BREAKER
from engine.control.records import CLOSED, OVERRIDE_AUTO
from engine.recallhealth import breaker
from engine.recallhealth.breaker import BreakerPolicy, Transition

log = logging.getLogger("engram.breaker")


class BreakerBoard:
    """``admit`` before a fan-out, ``record`` after it; ``enabled = False`` turns it into a pass-through."""

    def __init__(self, inst: Instance, record_metric=None, policy: BreakerPolicy | None = None,
                 clock=time.monotonic, enabled: bool = True):
        self.inst = inst
        self.policy = policy or BreakerPolicy.for_budget(inst.params.probe_budget_ms,
                                                         cool_down_s=inst.params.breaker_cooldown)
        self.clock = clock
        self.enabled = enabled
        self._metric = record_metric or (lambda fn: None)
        self._rings = [recallstate.breaker_ring(inst, s) for s in range(inst.slots)]

    def _rec(self, slot: int):
        return recallstate.breaker(self.inst, slot)

    def admit(self, targets: list[int], count: bool = True) -> tuple[list[int], list[int]]:
        """(slots to ask, slots skipped because their breaker is open); ``count``:
        count the skipped ones as short-circuited requests (not for probes)."""
        if not self.enabled or not targets:
            return list(targets), []
        if all(int(self._rec(s).state) == CLOSED and int(self._rec(s).override) == OVERRIDE_AUTO
               for s in targets):
            return list(targets), []
        allowed, skipped, moves = [], [], []
        now = self.clock()
        with self._locked():
            for s in targets:
                ok, t = breaker.admit(s, self._rec(s), self.policy, now)
                (allowed if ok else skipped).append(s)
                if t is not None:
                    moves.append(t)
        self._report(moves)
        if skipped and count:
            self._metric(lambda w: [w.inc("recall_breaker_short_circuits_total", worker_id=s) for s in skipped])
        return allowed, skipped

    def record(self, outcomes: dict[int, str | None]) -> None:
        """``outcomes``: slot → None (success) or the failure's reason
        (``timeout``, ``error``, ``slow``)."""
        if not self.enabled or not outcomes:
            return
        now = self.clock()
        moves = []
        with self._locked():
            for s, why in outcomes.items():
                t = breaker.record(s, self._rec(s), self._rings[s], self.policy, why is not None, now, why or "")
                if t is not None:
                    moves.append(t)
        self._report(moves)

    def note(self, targets: list[int], answered: dict, into: dict[int, str | None]) -> None:
        """Fold one request's answers (``QueryClient.ask(answered=...)``) into
        ``into``, keeping each slot's first failure (a recall made of several
        requests counts once per slot)."""
        for t in targets:
            why = self.classify(answered[t][0] if t in answered else None)
            if into.get(t) is None:
                into[t] = why

    def classify(self, latency_s: float | None) -> str | None:
        """An answer's outcome: None for a good one, else why it counts as a failure."""
        if latency_s is None:
            return "timeout"
        return "slow" if latency_s > self.policy.slow_s else None

    def override(self, slot: int, value: int) -> None:
        with self._locked():
            breaker.set_override(self._rec(slot), value)

    def _report(self, moves: list[Transition]) -> None:
        for t in moves:
            old, new = t.names
            log.warning("recall breaker of worker slot %d: %s -> %s (%s)", t.slot, old, new, t.reason)
            self._metric(lambda w, t=t, old=old, new=new: w.inc(
                "recall_breaker_transitions_total", worker_id=t.slot, **{"from": old, "to": new}))

    def _locked(self):
        return self.inst.locks.hold(LOCK_BREAKER)
