"""``engram-stream status``: one JSON object built from shared memory, and a table."""

from __future__ import annotations

import time

from engine import admission
from engine.instance import (H_DRAINING, H_READY, H_STARTED, H_SUP_PID, LANES, LIVE_HEARTBEAT,
                             STATE_NAMES, SUP_CPU, SUP_PID, SUP_RESTARTS, SUP_STATE, H_BP_STATE,
                             Instance)


def collect(inst: Instance) -> dict:
    hdr = inst.hdr
    now = time.monotonic()
    sup, live = inst.ctl["slot_sup"], inst.ctl["slot_live"]
    workers = []
    for s in range(inst.slots):
        cpu = int(sup[s, SUP_CPU])
        hb = float(live[s, LIVE_HEARTBEAT])
        workers.append({
            "slot": s,
            "pid": int(sup[s, SUP_PID]) or None,
            "cpus": [cpu] if cpu >= 0 else [],
            "state": STATE_NAMES.get(int(sup[s, SUP_STATE]), "unknown"),
            "restarts": int(sup[s, SUP_RESTARTS]),
            "heartbeat_age_s": round(now - hb, 3) if hb > 0 else None,
        })
    queued, capacity = inst.queued_by_lane(), inst.capacity_by_lane()
    counts = inst.ctl["shard_counts"]
    spaces = {}
    for idx, name in inst.space_names().items():
        col = counts[:, idx]
        spaces[name] = {"vectors": int(col.sum()), "shards": int((col > 0).sum())}
    state = int(hdr[H_BP_STATE])
    return {
        "name": inst.name,
        "pid": int(hdr[H_SUP_PID]),
        "state": "draining" if hdr[H_DRAINING] else ("running" if hdr[H_READY] else "starting"),
        "started_at": int(hdr[H_STARTED]),
        "dim": inst.dim,
        "metric": inst.params["metric"],
        "workers": workers,
        "queues": {lane: {"depth": queued[i], "capacity": capacity[i]} for i, lane in enumerate(LANES)},
        "backpressure": admission.STATES[state] if 0 <= state < len(admission.STATES) else "unknown",
        "pressure": round(inst.pressure(), 4),
        "spaces": spaces,
    }


def render(st: dict) -> str:
    lines = [f"instance {st['name']}  supervisor pid {st['pid']}  {st['state']}  "
             f"dim {st['dim']} {st['metric']}  backpressure {st['backpressure']} "
             f"(pressure {st['pressure']:.1%})", ""]
    lines.append(f"{'slot':>4}  {'pid':>8}  {'cpus':<6}  {'state':<9}  {'restarts':>8}  {'heartbeat':>9}")
    for w in st["workers"]:
        cpus = ",".join(map(str, w["cpus"])) or "-"
        age = "-" if w["heartbeat_age_s"] is None else f"{w['heartbeat_age_s']:.2f}s"
        lines.append(f"{w['slot']:>4}  {w['pid'] or '-':>8}  {cpus:<6}  {w['state']:<9}  "
                     f"{w['restarts']:>8}  {age:>9}")
    lines.append("")
    lines.append(f"{'lane':<7}  {'depth':>9}  {'capacity':>9}  {'used':>6}")
    for lane, q in st["queues"].items():
        used = q["depth"] / q["capacity"] if q["capacity"] else 0.0
        lines.append(f"{lane:<7}  {q['depth']:>9}  {q['capacity']:>9}  {used:>6.1%}")
    lines.append("")
    if st["spaces"]:
        lines.append(f"{'space':<32}  {'vectors':>10}  {'shards':>6}")
        for name, sp in sorted(st["spaces"].items()):
            lines.append(f"{name:<32}  {sp['vectors']:>10}  {sp['shards']:>6}")
    else:
        lines.append("no memory spaces yet")
    return "\n".join(lines)
