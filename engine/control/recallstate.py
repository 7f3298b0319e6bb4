"""Views of the recall-health records of the control block, by role.

The fields (``probe``, ``breaker``, ``breaker_ring``, ``tuned``) are laid out
in ``engine.control.layouts``; their cells and writers in
``engine.control.records`` (``ProbeRecord``, ``BreakerRecord``,
``TunedRecord``). Like ``Instance.sup``/``Instance.live``, a view is
writable only for its writer role; everyone else gets a read-only row.
"""

from __future__ import annotations

import json

import numpy as np

from engine.control.instance import Instance
from engine.control.layouts import BREAKER_RING_BYTES, TUNE_LOG_BYTES, TUNE_LOG_ENTRIES
from engine.control.records import (PROBER, RECALLERS, SUPERVISOR, BreakerRecord, ProbeRecord,
                                    TunedRecord)


def probe(inst: Instance, slot: int) -> ProbeRecord:
    """The probe record of ``slot``: writable by the prober only."""
    return ProbeRecord(inst.ctl["probe"][slot], inst.role, writable=inst.role == PROBER)


def breaker(inst: Instance, slot: int) -> BreakerRecord:
    """The breaker record of ``slot``: writable by recallers, who hold ``LOCK_BREAKER``."""
    return BreakerRecord(inst.ctl["breaker"][slot], inst.role, writable=inst.role in RECALLERS)


def breaker_ring(inst: Instance, slot: int) -> np.ndarray:
    """The outcome ring of ``slot`` (u1[BREAKER_RING_BYTES], 1 = failure); read-only for non-recallers."""
    row = inst.ctl["breaker_ring"][slot]
    if inst.role not in RECALLERS:
        row = row.view()
        row.flags.writeable = False
    assert row.shape == (BREAKER_RING_BYTES,)
    return row


def tuned(inst: Instance) -> TunedRecord:
    """The live settings: writable by the supervisor only."""
    return TunedRecord(inst.ctl["tuned"], inst.role, writable=inst.role == SUPERVISOR)


def init(inst: Instance) -> None:
    """Start values, written by the supervisor after ``Instance.create`` (zeros
    already mean: probes unknown, breakers closed, no override): the live
    settings = the configured ones."""
    p = inst.params
    t = tuned(inst)
    t.batch_budget_ms = p.batch_budget_ms
    t.steal_threshold = p.steal_threshold


def live_settings(inst: Instance) -> tuple[float, int] | None:
    """(batch budget in seconds, steal threshold) from the live settings, or
    None while they hold nothing usable (read as untrusted input)."""
    t = tuned(inst)
    budget_ms, steal = float(t.batch_budget_ms), int(t.steal_threshold)
    if not 0.0 < budget_ms <= 60_000.0 or not 0 <= steal <= 1 << 40:
        return None
    return budget_ms / 1000.0, steal


def append_tune_log(inst: Instance, entry: dict) -> None:
    """Append one audit entry (supervisor only): the row first, then the count."""
    t = tuned(inst)
    if inst.role != SUPERVISOR:
        raise PermissionError(f"{inst.role} may not write the tune log (the supervisor only)")
    blob = json.dumps(entry, separators=(",", ":"), default=str).encode()[:TUNE_LOG_BYTES]
    n = int(t.log_count)
    row = inst.ctl["tune_log"][n % TUNE_LOG_ENTRIES]
    row[:] = 0
    row[:len(blob)] = np.frombuffer(blob, np.uint8)
    t.log_count = n + 1


def read_tune_log(inst: Instance) -> list[dict]:
    """The audit log, oldest first (entries that do not parse are skipped: untrusted input)."""
    n = max(0, int(tuned(inst).log_count))
    out = []
    for i in range(max(0, n - TUNE_LOG_ENTRIES), n):
        raw = bytes(inst.ctl["tune_log"][i % TUNE_LOG_ENTRIES]).split(b"\0", 1)[0]
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
