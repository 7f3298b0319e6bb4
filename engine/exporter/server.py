"""The exporter process: serves the metric array and health, reading shared memory only.

It writes exactly two cells, its own pid and bound port (``Header.exporter_pid``,
``Header.exporter_port``), so a caller of ``--metrics-addr 127.0.0.1:0`` can find
it. Everything else is read: the metric array through ``ArrayCollector``,
queue gauges from the ring counters, health from the control block.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from engine import child, identity
from engine.control import admission
from engine.control.layouts import LANES
from engine.control.partitions import PartitionTable
from engine.control.records import EXPORTER, STATE_NAMES
from engine.control.instance import Instance, pid_alive
from engine.control.pressure import unwritable
from engine.signals import SignalQueue
from engine.control.sessions import SessionTable
from metrics.collector import ArrayCollector
from metrics.exporter import serve
from metrics.writer import MetricWriter
from engine.recallhealth import report as recall_report

log = logging.getLogger("engram.exporter")

PARENT_CHECK_S = 0.5



def live_gauges(inst: Instance) -> dict:
    queued, capacity = inst.queued_by_lane(), inst.capacity_by_lane()
    state = int(inst.header.bp_state)
    return {
        "queue_depth": [({"priority": lane}, float(queued[i])) for i, lane in enumerate(LANES)],
        "queue_capacity": [({"priority": lane}, float(capacity[i])) for i, lane in enumerate(LANES)],
        "queue_memory_bytes": [({}, float(inst.ring_bytes()))],
        "backpressure_state": [({}, float(state))],
        "active_sessions": [({}, float(SessionTable(inst.session_rows).count()))],
        **recall_report.live_gauges(inst),
        **(PartitionTable(inst.partition_rows).live_gauges() if getattr(inst.params, "cluster", None) else {}),
    }


class Health:
    """Component health from the control block; ``since`` is when this
    exporter first saw a component in its current status."""

    def __init__(self, inst: Instance, clock=time.monotonic, wall=time.time):
        self.inst = inst
        self.clock = clock
        self.wall = wall
        self.started = wall()
        self._since: dict[str, tuple[str, float]] = {}

    def _mark(self, name: str, status: str, reason: str, **extra) -> dict:
        prev = self._since.get(name)
        if prev is None or prev[0] != status:
            self._since[name] = (status, self.wall())
        return {"status": status, "reason": reason, "since": self._since[name][1], **extra}

    def __call__(self) -> dict:
        inst, hdr = self.inst, self.inst.header
        now = self.clock()
        sup_ok = pid_alive(int(hdr.sup_pid))
        sup, live = inst.sup, inst.live
        slots, down = [], []
        for s in range(inst.slots):
            state = int(sup(s).state)
            age = now - float(live(s).heartbeat)
            up = inst.slot_up(s, now)
            slots.append({"slot": s, "state": STATE_NAMES.get(state, "unknown"), "up": up,
                          "heartbeat_age_s": round(age, 3)})
            if not up:
                down.append(s)
        if not down:
            workers = self._mark("workers", "up", f"all {inst.slots} workers heartbeating", slots=slots)
        elif len(down) < inst.slots:
            workers = self._mark("workers", "degraded", f"worker slot(s) {down} down", slots=slots)
        else:
            workers = self._mark("workers", "down", "no worker is heartbeating", slots=slots)
        state = int(hdr.bp_state)
        state_name = admission.STATES[state] if 0 <= state < len(admission.STATES) else "unknown"
        pressure = inst.pressure()
        if state >= admission.OVERLOADED:
            queues = self._mark("queues", "down", f"overloaded: pressure {pressure:.1%}")
        elif state >= admission.CRITICAL:
            queues = self._mark("queues", "degraded", f"backpressure {state_name}: pressure {pressure:.1%}")
        else:
            queues = self._mark("queues", "up", f"backpressure {state_name}: pressure {pressure:.1%}")
        draining = bool(hdr.draining)
        supervisor = self._mark("supervisor", "up" if sup_ok and not draining else "down",
                                "draining for shutdown" if draining else
                                ("running" if sup_ok else "supervisor process is gone"))
        blocked = unwritable(inst)
        storage = self._mark("storage", "down" if blocked else "up",
                             blocked or "write-ahead logs writable")
        exporter = {"status": "up", "reason": f"pid {os.getpid()}", "since": self.started}
        rh = recall_report.recall_health(inst)
        recall = self._mark("recall", rh["status"], rh["reason"], slots=rh["slots"])
        components = {"supervisor": supervisor, "workers": workers, "queues": queues, "storage": storage,
                      "exporter": exporter, "recall": recall}
        if inst.params.grpc_addr != "off":
            # Not part of readiness: local producers and recall do not need it.
            gw_pid = int(hdr.gateway_pid)
            components["gateway"] = self._mark(
                "gateway", "up" if pid_alive(gw_pid) else "down",
                f"pid {gw_pid}, gRPC port {int(hdr.gateway_port)}" if pid_alive(gw_pid) else
                "gateway process is gone (the supervisor restarts it)")
        # Ready: supervisor up, every worker heartbeating, not overloaded
        # (critical still admits high and normal work, so it stays ready).
        reasons = [c["reason"] for c in (supervisor, workers, storage) if c["status"] != "up"]
        if queues["status"] == "down":
            reasons.append(queues["reason"])
        if not rh["ok"]:  # a slot unhealthy: three probes in a row failed
            reasons.append(rh["reason"])
        return {
            "live": sup_ok,
            "ready": not reasons,
            "reason": "; ".join(reasons) if reasons else "ready",
            "components": components,
        }


def recall_routes(inst: Instance) -> dict:
    """``/health/recall`` (503 while a slot is unhealthy) and ``/api/v1/system/config``."""
    def recall():
        rh = recall_report.recall_health(inst)
        return (200 if rh["ok"] else 503), rh
    return {"/health/recall": recall, "/api/v1/system/config": lambda: (200, recall_report.config_report(inst))}


def main(name: str, addr: str, inherited: list[int] = (), supervisor_pid: int = 0) -> None:
    """Entry point in the forked child."""
    child.prepare(inherited, supervisor_pid)
    identity.become("exporter", name)  # before the HTTP server's threads; the port follows
    inst = Instance.attach(name, EXPORTER)
    collector = ArrayCollector(inst.metrics, inst.space_names, lambda: live_gauges(inst))
    writer = MetricWriter(inst.metrics, inst.metrics.row_map.EXPORTER)
    # on_reject calls are serialised by the server: this row keeps one writer.
    server = serve(addr, collector, Health(inst),
                   on_reject=lambda reason: writer.inc("exporter_rejected_connections_total", reason=reason),
                   routes=recall_routes(inst))
    inst.header.exporter_pid = os.getpid()
    inst.header.exporter_port = server.port
    identity.become("exporter", name, port=server.port)
    log.info("exporter serving http://%s:%d/metrics", server.server_address[0], server.port)
    # SIGTERM (the supervisor's stop, sent once the workers are gone) ends the
    # loop; the handler only enqueues. Without a supervisor pid (run alone)
    # only SIGTERM ends it, and the wait still sleeps: it never spins.
    signals = SignalQueue()
    signals.install((signal.SIGTERM,))
    try:
        while not supervisor_pid or os.getppid() == supervisor_pid:
            signals.wait(PARENT_CHECK_S)
            if signals.pop() == signal.SIGTERM:
                log.info("exporter stopping (SIGTERM)")
                break
    finally:
        server.shutdown()
        signals.uninstall()
