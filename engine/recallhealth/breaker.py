"""The per-slot circuit breaker of the recall fan-out: a pure state machine.

States (``engine.control.records``: CLOSED, HALF_OPEN, OPEN)::

    CLOSED ──failure rate > max_failure_rate over ≥ min_samples of the last window──► OPEN
    OPEN ──cool_down elapsed (checked when a request wants the slot)──► HALF_OPEN
    HALF_OPEN ──a success──► CLOSED (ring cleared)
    HALF_OPEN ──a failure──► OPEN (cool-down starts again)

An outcome is a failure when the slot missed the deadline, answered with an
error, or answered slower than ``slow_s`` (1.5 x the probe budget). While
OPEN the slot is skipped at once; HALF_OPEN lets ``trials`` requests through
(a trial whose requester died is given back after another cool-down).
Outcomes arriving while OPEN (late answers of requests let through before
it opened) are ignored. A manual override (``OVERRIDE_OPEN`` /
``OVERRIDE_CLOSED``) wins over all of this until set back to auto.

The functions act on one slot's ``BreakerRecord`` and its outcome ring (u1,
1 = failure) with an injected ``now``; the caller holds the breaker lock
(``engine.recallhealth.board``). Each returns the transition it made, if any,
so the caller can log and count it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.control.records import (BREAKER_STATE_NAMES, CLOSED, HALF_OPEN, OPEN, OVERRIDE_CLOSED,
                                    OVERRIDE_OPEN)


@dataclass(frozen=True)
class BreakerPolicy:
    window: int = 50
    min_samples: int = 20
    max_failure_rate: float = 0.05
    cool_down_s: float = 30.0
    trials: int = 5
    slow_s: float = 0.075  # 1.5 x the default probe budget of 50 ms

    @classmethod
    def for_budget(cls, probe_budget_ms: float, **kw) -> "BreakerPolicy":
        return cls(slow_s=1.5 * probe_budget_ms / 1000.0, **kw)


@dataclass(frozen=True)
class Transition:
    slot: int
    old: int
    new: int
    reason: str

    @property
    def names(self) -> tuple[str, str]:
        return BREAKER_STATE_NAMES[self.old], BREAKER_STATE_NAMES[self.new]


def _move(slot: int, rec, new: int, now: float, reason: str) -> Transition:
    old = int(rec.state)
    rec.state = new
    rec.changed = now
    rec.trials = 0
    rec.transitions = int(rec.transitions) + 1
    return Transition(slot, old, new, reason)


def _clear(rec, ring: np.ndarray) -> None:
    ring[:] = 0
    rec.pos = 0
    rec.samples = 0
    rec.failures = 0


def admit(slot: int, rec, policy: BreakerPolicy, now: float) -> tuple[bool, Transition | None]:
    """May a request go to the slot now? Moves OPEN → HALF_OPEN when the cool-down is over."""
    override = int(rec.override)
    if override == OVERRIDE_OPEN:
        return False, None
    if override == OVERRIDE_CLOSED:
        return True, None
    state = int(rec.state)
    if state == CLOSED:
        return True, None
    waited = now - float(rec.changed)
    if state == OPEN:
        if waited < policy.cool_down_s:
            return False, None
        t = _move(slot, rec, HALF_OPEN, now, f"cool-down of {policy.cool_down_s:g}s over")
        rec.trials = 1
        return True, t
    # HALF_OPEN: a few trials; a trial lost with its requester is given back after a cool-down.
    if int(rec.trials) >= policy.trials and waited >= policy.cool_down_s:
        rec.trials = 0
        rec.changed = now
    if int(rec.trials) < policy.trials:
        rec.trials = int(rec.trials) + 1
        return True, None
    return False, None


def record(slot: int, rec, ring: np.ndarray, policy: BreakerPolicy, failed: bool, now: float,
           why: str = "") -> Transition | None:
    """Count one outcome of a request the slot was sent."""
    state = int(rec.state)
    if state == OPEN:
        return None
    if state == HALF_OPEN:
        if failed:
            return _move(slot, rec, OPEN, now, f"trial request failed ({why or 'failure'}) while half-open")
        _clear(rec, ring)
        return _move(slot, rec, CLOSED, now, "trial request succeeded while half-open")
    window = min(policy.window, len(ring))
    pos = int(rec.pos) % window
    samples = int(rec.samples)
    failures = int(rec.failures)
    if samples >= window:
        failures -= int(ring[pos])  # the oldest outcome leaves the window
    else:
        samples += 1
    ring[pos] = 1 if failed else 0
    failures += int(failed)
    rec.pos = (pos + 1) % window
    rec.samples = samples
    rec.failures = max(0, failures)
    if (int(rec.override) == 0 and samples >= policy.min_samples
            and failures / samples > policy.max_failure_rate):
        t = _move(slot, rec, OPEN, now, f"{failures} of the last {samples} requests failed "
                                        f"(> {policy.max_failure_rate:.0%}); last: {why or 'failure'}")
        _clear(rec, ring)
        return t
    return None


def set_override(rec, override: int) -> None:
    """The ``breaker`` command: force open, force closed, or back to automatic."""
    rec.override = override
