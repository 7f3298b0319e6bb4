"""A graceful stop, step by step, and the record of how a run ended.

Order (SIGTERM, or ``engram-stream stop``):

1. ``begin``: admission closes (producers get ``over_capacity``, "shutting
   down"), the queues drain for up to ``--graceful-timeout``;
2. ``check`` (each tick): once the queues are empty or the time is up,
   ``finish``:
3. workers are told to stop (``Header.stop``): each ends its batch, takes a
   final snapshot and exits; after as long again, a straggler is killed;
4. whatever is still queued is saved to the data directory
   (``engine.supervisor.spill``) before the shared memory goes: nothing
   acknowledged is lost however short the timeout was. Should the save fail
   (disk full), the shared memory is kept instead and the next start
   carries it over, as after a ``kill -9``;
5. the gateway (final ``Status`` to every open stream, then the gRPC
   server's grace), the prober, the cluster follower (it releases its
   partition leases, so other hosts take them at once instead of after the
   lease ttl) and the exporter (serving until the workers are gone) get
   SIGTERM, and SIGKILL only if they outlast ``STOP_GRACE_S``.

The follower stops applying as soon as admission closes (it watches the
header); the arbiter does not restart it while the engine drains.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

from engine import exitcodes
from engine.fsutil import atomic_write
from engine.supervisor import salvage, spill
from shm.errors import LayoutError, LockTimeout

log = logging.getLogger("engram.supervisor")

TICK_S = 0.1
STOP_GRACE_S = 5.0


class Shutdown:
    """The stop of one supervisor ``sv`` (its instance, children, spawner, clock)."""

    def __init__(self, sv):
        self.sv = sv
        self.since: float | None = None
        self.keep_shared_memory = False  # the backlog could not be saved: the next start carries it over

    def begin(self) -> None:
        hdr = self.sv.inst.header
        hdr.admission_closed = 1
        hdr.draining = 1
        self.since = self.sv.clock()

    @property
    def draining(self) -> bool:
        return self.since is not None

    def check(self) -> None:
        sv = self.sv
        if self.since is None or sv.exit_code is not None:
            return
        left = sum(sv.inst.queued_by_lane())
        timed_out = sv.clock() - self.since > sv.cfg.graceful_timeout
        if left and not timed_out:
            return
        self.finish(drained=not left, why=f"drain timed out after {sv.cfg.graceful_timeout:g}s")

    def finish(self, drained: bool, why: str, code: int | None = None, patient: bool = True) -> None:
        """Stop everything; ``patient`` False (a forced stop) kills the workers at once."""
        sv = self.sv
        if drained:
            log.info("queues drained; stopping workers")
        self.stop_workers(grace=max(STOP_GRACE_S, sv.cfg.graceful_timeout) if patient else 0.0)
        saved = self.save_backlog()
        if saved:
            sv.exit_reason = (f"{why}; {saved} queued observation(s) were saved "
                              + ("and stay in shared memory; the next start queues them again"
                                 if self.keep_shared_memory else
                                 f"to {spill.path(sv.cfg.data_dir)} and are queued again at the next start"))
            log.warning("%s", sv.exit_reason)
        else:
            sv.exit_reason = "queues drained" if drained else f"{why}; nothing was left queued"
        self.stop_services()
        sv.exit_code = code if code is not None else (exitcodes.BACKLOG if saved else exitcodes.OK)

    def stop_workers(self, grace: float) -> None:
        """Ask every worker to stop; wait ``grace`` for their final snapshots, then kill."""
        sv = self.sv
        sv.inst.header.stop = 1
        for sig in sv.inst.wake:
            sig.post()
        self._wait_for(sv.slots, grace)

    def save_backlog(self) -> int:
        """Copy what is still queued (workers gone) to the data directory; returns how many."""
        sv = self.sv
        try:
            leftovers = salvage.collect_from(sv.inst)
        except (LayoutError, LockTimeout) as exc:
            log.error("rings unreadable at stop (%s): their records stay in shared memory", exc)
            self.keep_shared_memory = True
            return sum(sv.inst.queued_by_lane())
        try:
            return spill.save(sv.cfg.data_dir, leftovers)
        except OSError as exc:
            log.error("could not save the queued observations to %s (%s); keeping the shared memory "
                      "so that the next start carries them over", spill.path(sv.cfg.data_dir), exc)
            self.keep_shared_memory = True
            return sum(len(x.ids) for x in leftovers)

    def stop_services(self) -> None:
        """SIGTERM to the gateway, the prober, the cluster follower and the
        exporter (they stop gracefully), SIGKILL after STOP_GRACE_S."""
        sv = self.sv
        services = [c for c in (sv.gateway, sv.prober, sv.cluster, sv.exporter) if c is not None and c.proc is not None]
        for c in services:
            sv.spawner.signal(c, signal.SIGTERM)
        self._wait_for(services, STOP_GRACE_S)

    def _wait_for(self, children, seconds: float) -> None:
        sv = self.sv
        deadline = sv.clock() + seconds
        while sv.clock() < deadline and any(c.proc is not None for c in children):
            sv.wait(TICK_S)
            sv.reap()
        late = [c for c in children if c.proc is not None]
        for c in late:
            log.error("%s (pid %d) did not stop within %.0fs; killing it", c.label, c.pid, seconds)
            sv.spawner.kill(c)
            c.proc.join(5)
        sv.reap()  # a killed worker's slot is recorded as stopped like the others
        for c in late:
            c.proc, c.pid = None, 0


def write_exit_record(data_dir: str, code: int | None, reason: str) -> None:
    """``<data-dir>/last-exit.json``: how the last run ended (read by ``stop``)."""
    record = {"exit_code": code if code is not None else exitcodes.ERROR,
              "reason": reason or "supervisor failed", "pid": os.getpid(), "time": time.time()}
    path = os.path.join(data_dir, "last-exit.json")
    try:
        atomic_write(path, json.dumps(record).encode())
    except OSError as exc:
        log.warning("could not write %s: %s", path, exc)
