"""What the exporter serves about recall health and live settings, read from the control block.

* ``recall_health(inst)`` → ``GET /health/recall`` (200 while no slot is
  unhealthy, else 503) and the ``recall`` component of ``/api/v1/system/health``;
* ``config_report(inst)`` → ``GET /api/v1/system/config`` and ``status``;
* ``live_gauges(inst)`` → ``recall_probe_state``, ``recall_breaker_state``.

Read-only: every process may call these.
"""

from __future__ import annotations

from engine.control import recallstate
from engine.control.instance import Instance
from engine.control.records import (BREAKER_STATE_NAMES, OVERRIDE_NAMES, PROBE_DEGRADED,
                                    PROBE_UNHEALTHY)
from engine.recallhealth.probe import slot_report


def recall_health(inst: Instance) -> dict:
    """{status: up|degraded|down, reason, ok (no slot unhealthy), slots: [...]}."""
    slots, unhealthy, degraded = [], [], []
    for s in range(inst.slots):
        rec = recallstate.probe(inst, s)
        row = slot_report(s, rec)
        b = recallstate.breaker(inst, s)
        row["breaker"] = BREAKER_STATE_NAMES.get(int(b.state), "unknown")
        row["breaker_override"] = OVERRIDE_NAMES.get(int(b.override), "unknown")
        slots.append(row)
        state = int(rec.state)
        if state == PROBE_UNHEALTHY:
            unhealthy.append(s)
        elif state == PROBE_DEGRADED:
            degraded.append(s)
    if unhealthy:
        status, reason = "down", f"recall probe failing on worker slot(s) {unhealthy}"
    elif degraded:
        status, reason = "degraded", f"recall probe failed twice in a row on worker slot(s) {degraded}"
    else:
        status, reason = "up", f"recall probes pass on every answering slot (every {inst.params.probe_interval:g}s)"
    return {"status": status, "reason": reason, "ok": not unhealthy, "slots": slots}


def config_report(inst: Instance) -> dict:
    """Current live values, whether the tuner may change them, and the change history."""
    p = inst.params
    t = recallstate.tuned(inst)
    current = recallstate.live_settings(inst)
    budget_ms = p.batch_budget_ms if current is None else current[0] * 1000.0
    steal = p.steal_threshold if current is None else current[1]
    return {
        "autotune": p.autotune, "autotune_interval_s": p.autotune_interval,
        "settings": {
            "batch_budget_ms": {"value": round(budget_ms, 3), "configured": p.batch_budget_ms,
                                "pinned": "batch_budget_ms" in p.pinned},
            "steal_threshold": {"value": int(steal), "configured": p.steal_threshold,
                                "pinned": "steal_threshold" in p.pinned},
        },
        "generation": int(t.generation),
        "history": recallstate.read_tune_log(inst),
    }


def live_gauges(inst: Instance) -> dict:
    probe_rows = inst.ctl["probe"]
    breaker_rows = inst.ctl["breaker"]
    return {
        "recall_probe_state": [({"worker_id": str(s)}, float(probe_rows[s, 0])) for s in range(inst.slots)],
        "recall_breaker_state": [({"worker_id": str(s)}, float(breaker_rows[s, 0])) for s in range(inst.slots)],
    }


def render_lines(recall: dict | None, config: dict | None) -> list[str]:
    """The ``engram-stream status`` section: probe and breaker per slot, live settings and changes."""
    lines: list[str] = []
    if recall:
        lines.append(f"recall health: {recall['status']} ({recall['reason']})")
        lines.append(f"{'slot':>4}  {'probe':<9}  {'fails':>5}  {'last':>9}  {'breaker':<9}  override")
        for r in recall["slots"]:
            lines.append(f"{r['slot']:>4}  {r['state']:<9}  {r['consecutive_failures']:>5}  "
                         f"{r['last_latency_ms']:>7.1f}ms  {r['breaker']:<9}  {r['breaker_override']}")
    if config:
        s = config["settings"]
        pins = [k for k, v in s.items() if v["pinned"]]
        lines.append(f"live settings (autotune {config['autotune']}"
                     f"{', pinned: ' + ', '.join(pins) if pins else ''}): batch-budget-ms "
                     f"{s['batch_budget_ms']['value']:g}, steal-threshold {s['steal_threshold']['value']}")
        for h in config["history"][-5:]:
            lines.append(f"  {h.get('setting')} {h.get('old')} -> {h.get('new')}: {h.get('evidence')}")
    return lines
