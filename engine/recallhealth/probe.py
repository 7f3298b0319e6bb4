"""The probe's hysteresis: from consecutive outcomes to a slot's state.

::

    unknown ──success──► healthy
    any ──2 failures in a row──► degraded ──3rd failure in a row──► unhealthy
    degraded/unhealthy ──2 successes in a row──► healthy

A single failure changes nothing (a state flips only on a pattern, so one
slow probe under load does not page anyone); readiness fails while a slot
is unhealthy (``readiness_reasons``).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.control.records import (PROBE_DEGRADED, PROBE_HEALTHY, PROBE_REASON_NAMES,
                                    PROBE_STATE_NAMES, PROBE_UNHEALTHY, PROBE_UNKNOWN)

DEGRADED_AFTER = 2
UNHEALTHY_AFTER = 3
HEALTHY_AFTER = 2


@dataclass(frozen=True)
class ProbeState:
    state: int = PROBE_UNKNOWN
    failures: int = 0
    successes: int = 0


def step(prev: ProbeState, ok: bool) -> ProbeState:
    if ok:
        successes = prev.successes + 1
        state = prev.state
        if state == PROBE_UNKNOWN or (state != PROBE_HEALTHY and successes >= HEALTHY_AFTER):
            state = PROBE_HEALTHY
        return ProbeState(state, 0, successes)
    failures = prev.failures + 1
    state = prev.state
    if failures >= UNHEALTHY_AFTER:
        state = PROBE_UNHEALTHY
    elif failures >= DEGRADED_AFTER:
        state = max(state, PROBE_DEGRADED) if state != PROBE_UNKNOWN else PROBE_DEGRADED
    return ProbeState(state, failures, 0)


def slot_report(slot: int, rec) -> dict:
    """One slot's probe record as served by ``GET /health/recall``."""
    return {"slot": slot, "state": PROBE_STATE_NAMES.get(int(rec.state), "unknown"),
            "consecutive_failures": int(rec.failures), "consecutive_successes": int(rec.successes),
            "last_success": float(rec.last_success) or None, "last_failure": float(rec.last_failure) or None,
            "last_latency_ms": round(float(rec.last_latency) * 1000, 3),
            "last_failure_reason": PROBE_REASON_NAMES.get(int(rec.last_reason), "unknown"),
            "probes": int(rec.probes)}
