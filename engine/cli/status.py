"""``engram-stream status``: one JSON object built from shared memory, and a table.

Each process appears with the title it gives itself (``engine.identity``),
so what ``status`` prints is what ``ps``/``top`` show.
"""

from __future__ import annotations

import time

from engine import identity
from engine.control import admission
from engine.control.layouts import LANES
from engine.control.records import STATE_NAMES
from engine.control.instance import Instance, pid_alive
from engine.control.sessions import SessionTable
from engine.recallhealth import report as recall_report
from metrics import readout

LATENCY_QUANTILES = (0.5, 0.99, 0.999)


def _quantiles(array, before, after, name) -> dict:
    """Percentiles over the window between the snapshots, or over the whole
    run when the window saw no samples (``window`` says which)."""
    bounds, counts, _ = readout.histogram(array, after, name)
    window = "run"
    if before is not None:
        recent = counts - readout.histogram(array, before, name)[1]
        if recent.sum() > 0:
            counts, window = recent, "interval"
    out = {f"p{q * 100:g}": readout.quantile(bounds, counts, q) for q in LATENCY_QUANTILES}
    out["count"] = int(counts.sum())
    out["window"] = window
    out["top_bucket"] = float(bounds[-1])  # a percentile equal to this may be larger
    return out


def throughput(inst: Instance, interval: float = 0.0) -> dict:
    """Totals, rates and latency percentiles from the metric array.

    With ``interval`` > 0, two snapshots that far apart give rates and the
    percentiles of that window; otherwise percentiles cover the whole run.
    """
    array = inst.metrics
    before = None
    if interval > 0:
        before = array.snapshot()
        time.sleep(interval)
    after = array.snapshot()
    inserted = float(readout.block(array, after, "observations_total").sum())
    rejected_block = readout.block(array, after, "observations_rejected_total")  # [space, reason, 1]
    from metrics.catalog import DOMAINS
    rejected = {r: int(rejected_block[:, i].sum()) for i, r in enumerate(DOMAINS["rejection_reason"])}
    out = {
        "observations_total": int(inserted),
        "observations_rejected_total": rejected,
        "observation_latency_seconds": _quantiles(array, before, after, "observation_latency_seconds"),
        "recall_latency_seconds": _quantiles(array, before, after, "recall_latency_seconds"),
        "window_seconds": interval if interval > 0 else None,
        "observations_per_second": None,
    }
    if before is not None:
        then = float(readout.block(array, before, "observations_total").sum())
        out["observations_per_second"] = round((inserted - then) / interval, 1)
    return out


def collect(inst: Instance, interval: float = 0.0) -> dict:
    hdr = inst.header
    now = time.monotonic()
    sup, live = inst.sup, inst.live
    workers = []
    for s in range(inst.slots):
        cpu = int(sup(s).cpu)
        hb = float(live(s).heartbeat)
        workers.append({
            "slot": s,
            "pid": int(sup(s).pid) or None,
            "cpus": [cpu] if cpu >= 0 else [],
            "state": STATE_NAMES.get(int(sup(s).state), "unknown"),
            "restarts": int(sup(s).restarts),
            "heartbeat_age_s": round(now - hb, 3) if hb > 0 else None,
            "title": identity.title("worker", inst.name, s, cpu),
        })
    queued, capacity = inst.queued_by_lane(), inst.capacity_by_lane()
    counts = inst.shard_counts
    spaces = {}
    for idx, name in inst.space_names().items():
        col = counts[:, idx]
        spaces[name] = {"vectors": int(col.sum()), "shards": int((col > 0).sum())}
    state = int(hdr.bp_state)
    return {
        "name": inst.name,
        "pid": int(hdr.sup_pid),
        "title": identity.title("supervisor", inst.name),
        "state": "draining" if hdr.draining else ("running" if hdr.ready else "starting"),
        "started_at": int(hdr.started),
        "dim": inst.dim,
        "metric": inst.params.metric,
        "workers": workers,
        "queues": {lane: {"depth": queued[i], "capacity": capacity[i]} for i, lane in enumerate(LANES)},
        "backpressure": admission.STATES[state] if 0 <= state < len(admission.STATES) else "unknown",
        "pressure": round(inst.pressure(), 4),
        "spaces": spaces,
        "metrics_port": int(hdr.exporter_port) or None,
        "exporter": exporter_status(inst),
        "gateway": gateway_status(inst),
        "throughput": throughput(inst, interval),
        "recall_health": recall_report.recall_health(inst),  # probes and breakers
        "config": recall_report.config_report(inst),  # live settings and the tuner's changes
    }


def gateway_status(inst: Instance) -> dict | None:
    """pid (None while it restarts), bound port, title and open sessions; None with --grpc-addr off."""
    if inst.params.grpc_addr == "off":
        return None
    pid, port = int(inst.header.gateway_pid), int(inst.header.gateway_port) or None
    return {"pid": pid if pid_alive(pid) else None, "port": port,
            "title": identity.title("gateway", inst.name, port=port),
            "sessions": SessionTable(inst.session_rows).count()}


def exporter_status(inst: Instance) -> dict:
    pid, port = int(inst.header.exporter_pid), int(inst.header.exporter_port) or None
    return {"pid": pid if pid_alive(pid) else None, "port": port,
            "title": identity.title("exporter", inst.name, port=port)}


def processes(st: dict) -> list[tuple[int | None, str]]:
    """(pid, title) of every process of the instance, supervisor first."""
    out = [(st["pid"], st["title"])]
    out += [(w["pid"], w["title"]) for w in st["workers"]]
    out += [(c["pid"], c["title"]) for c in (st.get("exporter"), st.get("gateway")) if c is not None]
    return out


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def render(st: dict) -> str:
    lines = [f"instance {st['name']}  supervisor pid {st['pid']}  {st['state']}  "
             f"dim {st['dim']} {st['metric']}  backpressure {st['backpressure']} "
             f"(pressure {st['pressure']:.1%})"]
    gw = st.get("gateway")
    if gw is not None:
        lines.append(f"gateway pid {gw['pid'] or 'down'}  port {gw['port'] or '-'}  sessions {gw['sessions']}")
    lines.append("")
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
    lines.append(f"{'pid':>8}  process")
    for pid, text in processes(st):
        lines.append(f"{pid or '-':>8}  {text}")
    lines.append("")
    t = st["throughput"]
    rate = "-" if t["observations_per_second"] is None else f"{t['observations_per_second']:.0f}/s"
    rejected = ", ".join(f"{k} {v}" for k, v in t["observations_rejected_total"].items() if v)
    lines.append(f"inserted {t['observations_total']} ({rate})  rejected: {rejected or 'none'}")
    for name, label in (("observation_latency_seconds", "observation latency"),
                        ("recall_latency_seconds", "recall latency")):
        q = t[name]
        window = f"last {t['window_seconds']:g}s" if q["window"] == "interval" else "since start"
        shown = "  ".join(f"{k} {'>=' if q[k] is not None and q[k] >= q['top_bucket'] else ''}{_ms(q[k])}"
                          for k in q if k.startswith("p"))
        lines.append(f"{label} ({window}, {q['count']} samples): {shown}")
    lines += recall_report.render_lines(st.get("recall_health"), st.get("config")) + [""]
    if st["spaces"]:
        lines.append(f"{'space':<32}  {'vectors':>10}  {'shards':>6}")
        for name, sp in sorted(st["spaces"].items()):
            lines.append(f"{name:<32}  {sp['vectors']:>10}  {sp['shards']:>6}")
    else:
        lines.append("no memory spaces yet")
    return "\n".join(lines)
