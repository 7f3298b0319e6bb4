"""The status report, built from shared memory alone: workers, queues, spaces,
backpressure, gateway and throughput, as one JSON-able dict.

``engram-stream status`` prints it (``engine.cli.status.render`` makes the
table) and ``Engine.status`` returns it; it reads the control block and the
metric array and writes nothing.
"""

from __future__ import annotations

import time

from engine import identity
from engine.control import admission
from engine.control.instance import Instance, pid_alive
from engine.control.layouts import LANES
from engine.control.records import STATE_NAMES
from engine.control.sessions import SessionTable
from metrics import readout
from metrics.catalog import DOMAINS

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


def slot_state(inst: Instance, slot: int, now: float) -> str:
    """The supervisor's state of the slot, corrected by what its worker shows:
    ``recovering`` while it rebuilds its shards, ``unresponsive`` when it is
    meant to run but has not beaten for ``ABSENT_AFTER_S`` (stopped, wedged:
    what ``worker_up 0`` says; the watchdog kills it after --worker-timeout)."""
    state = STATE_NAMES.get(inst.sup(slot).state, "unknown")
    live = inst.live(slot)
    if state in ("starting", "running") and live.recovering and live.pid != inst.sup(slot).pid:
        return "recovering"
    if state == "running" and not inst.slot_up(slot, now):
        return "unresponsive"
    return state


def collect(inst: Instance, interval: float = 0.0) -> dict:
    hdr = inst.header
    now = time.monotonic()
    sup, live = inst.sup, inst.live
    workers = []
    for s in range(inst.slots):
        cpu = int(sup(s).cpu)
        hb = float(live(s).heartbeat)
        worker = {
            "slot": s,
            "pid": int(sup(s).pid) or None,
            "title": identity.title("worker", inst.name, s, cpu),
            "cpus": [cpu] if cpu >= 0 else [],
            "state": slot_state(inst, s, now),
            "restarts": int(sup(s).restarts),
            "heartbeat_age_s": round(now - hb, 3) if hb > 0 else None,
        }
        if live(s).recovering:
            worker["recovery_progress"] = round(live(s).recovery_progress, 3)
        workers.append(worker)
    queued, capacity = inst.queued_by_lane(), inst.capacity_by_lane()
    counts = inst.shard_counts
    held = inst.ids.held
    spaces = {}
    for idx, name in inst.space_names().items():
        col = counts[:, idx]
        live = int(held[:, idx].sum())
        # vectors: live observations (one per id); stored: what the shards keep,
        # forgotten and replaced ones included until a compaction.
        spaces[name] = {"vectors": live, "stored": int(col.sum()), "deleted": max(0, int(col.sum()) - live),
                        "shards": int((col > 0).sum())}
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
