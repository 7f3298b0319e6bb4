"""The supervisor: creates shared memory, spawns and watches the children.

Main loop (gunicorn's arbiter shape; each step small, idempotent, testable)::

    wait (select on the signal wake-up pipe, timeout TICK_S)
    → handle_signals → reap → kill_hung → reconcile → publish → drain/stop

Signal handlers only append to a list; ``signal.set_wakeup_fd`` makes the
wait return at once. Workers are forked before any thread exists here, and
set themselves up after the fork (``engine.worker.loop.main``).

Restart policy (``engine.supervisor.children.RestartPolicy``): a dead worker is
restarted after an exponential backoff; a slot that crashes too often is
parked, its open claims are handed to a running slot and its queued records
are drained by stealing (owners that are absent are stolen from at any
depth). Start-up checks live in ``engine.supervisor.preflight``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

from engine import identity
from engine.control import pressure
from engine.supervisor import salvage
from engine.supervisor.children import Child, RestartPolicy
from engine.supervisor.signals import SignalQueue
from engine.errors import InstanceRunning
from engine.control.records import DOWN, PARKED, RUNNING, STARTING, STOPPED
from engine.control.instance import Instance
from engine.supervisor.preflight import (check_bindable, check_gateway_files, check_name_free, check_shm_room, check_wal_manifest,
                              instance_params, plan_cpus)
from shm.lock import InstanceLock
from shm.segment import remove_instance_objects

log = logging.getLogger("engram.supervisor")

TICK_S = 0.1
STOP_GRACE_S = 5.0

# Exit codes of `engram-stream run` (docs/operations.md).
EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_RUNNING, EXIT_DRAIN_TIMEOUT, EXIT_FORCED = 0, 1, 2, 3, 4, 130


class Supervisor:
    def __init__(self, cfg, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self.inst: Instance | None = None
        self.lock: InstanceLock | None = None
        self.slots: list[Child] = []
        self.exporter = Child(-1, None, kind="exporter")
        self.gateway = Child(-1, None, kind="gateway") if cfg.grpc_addr != "off" else None
        self.cluster = Child(-1, None, kind="cluster") if getattr(cfg, "cluster", None) else None
        self.policy = RestartPolicy(cfg.flap_restarts, cfg.flap_window, cfg.park_seconds,
                                    cfg.restart_backoff_max)
        self.metrics = None
        self.signals = SignalQueue()
        self.draining_since: float | None = None
        self.exit_code: int | None = None
        self.exit_reason = ""
        import multiprocess
        self._ctx = multiprocess.get_context("fork")

    # -- setup -------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        identity.become("supervisor", cfg.name)  # children inherit it until they name themselves
        n, cpus = plan_cpus(cfg)
        os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
        os.chmod(cfg.data_dir, 0o700)
        self.lock = InstanceLock(os.path.join(cfg.data_dir, "LOCK"))
        if not self.lock.try_acquire():
            holder = self.lock.holder_pid()
            raise InstanceRunning(f"data directory {os.path.abspath(cfg.data_dir)} is in use by another "
                                  f"engram instance (pid {holder})")
        stale = check_name_free(cfg.name)
        params = instance_params(cfg, n, cpus)
        check_shm_room(params)
        check_bindable(cfg.metrics_addr, "--metrics-addr")
        if cfg.grpc_addr != "off":
            check_bindable(cfg.grpc_addr, "--grpc-addr")
            check_gateway_files(cfg)
        check_wal_manifest(params.data_dir, params)
        leftovers = []
        if stale:
            leftovers = salvage.collect(cfg.name, n, cfg.dim)
            removed = remove_instance_objects(cfg.name)
            log.warning("removed %d shared-memory object(s) left by a dead run of %r", len(removed), cfg.name)
        self.inst = Instance.create(params)
        salvage.restore(self.inst, leftovers)
        hdr = self.inst.header
        hdr.sup_pid = os.getpid()
        hdr.started = int(time.time())
        self.slots = [Child(i, cpus[i]) for i in range(n)]
        from metrics.writer import MetricWriter
        self.metrics = MetricWriter(self.inst.metrics, self.inst.metrics.row_map.SUPERVISOR)
        for s in self.slots:
            self.inst.sup(s.index).cpu = -1 if s.cpu is None else s.cpu
        self.signals.install((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD))
        log.info("instance %r: %d worker(s), cpus %s, dim %d %s, data dir %s", cfg.name, n,
                 "unpinned" if cfg.no_pin else cpus, cfg.dim, cfg.metric, os.path.abspath(cfg.data_dir))

    # -- main loop ---------------------------------------------------------
    def run(self) -> int:
        try:
            self.setup()
            while self.exit_code is None:
                self.wait(TICK_S)
                self.step()
            return self.exit_code
        finally:
            self.teardown()

    def wait(self, timeout: float) -> None:
        self.signals.wait(timeout)

    def step(self) -> None:
        self.handle_signals()
        if self.exit_code is not None:
            return
        self.reap()
        self.kill_hung()
        if self.exit_code is None:
            self.reconcile()
        self.publish()
        self.check_drain()

    def handle_signals(self) -> None:
        while (sig := self.signals.pop()) is not None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.draining_since is None:
                    log.info("%s: stopping admission and draining queues (up to %.0fs)",
                             signal.Signals(sig).name, self.cfg.graceful_timeout)
                    self.begin_drain()
                elif sig == signal.SIGINT:
                    log.warning("second SIGINT: stopping now without draining")
                    self.exit_reason = "forced stop by a second SIGINT; queued observations dropped"
                    self.kill_all()
                    self.exit_code = EXIT_FORCED
                    return

    def begin_drain(self) -> None:
        hdr = self.inst.header
        hdr.admission_closed = 1
        hdr.draining = 1
        self.draining_since = self.clock()

    def children(self) -> list[Child]:
        return self.slots + [c for c in (self.exporter, self.gateway, self.cluster) if c is not None]

    def reap(self) -> None:
        now = self.clock()
        sup = self.inst.sup
        for s in self.children():
            if s.proc is None or s.proc.exitcode is None:
                continue
            code = s.proc.exitcode
            reason = "hung" if s.killed_as_hung else ("signal" if code < 0 else "crash")
            stopping = bool(self.inst.header.stop)
            if s.kind == "worker":
                sup(s.index).pid = 0
                if stopping:
                    sup(s.index).state = STOPPED
                else:
                    self.note_claim_in_flight(s.index)
            if not stopping:
                log.error("%s (pid %d) exited with %s; reason %s", s.label, s.pid,
                          f"signal {-code}" if code < 0 else f"code {code}", reason)
                s.last_reason = reason
                self._record_crash(s, now)
            s.proc, s.pid, s.killed_as_hung = None, 0, False

    def _record_crash(self, s: Child, now: float) -> None:
        parked = self.policy.on_exit(s, now)
        if s.kind != "worker":
            return
        sup = self.inst.sup
        if not parked:
            sup(s.index).state = DOWN
            return
        sup(s.index).state = PARKED
        sup(s.index).parked_until = int((time.time() + self.cfg.park_seconds) * 1000)
        log.error("worker slot %d crashed %d times in %.0fs: parked for %.0fs; its queue is "
                  "drained by the other workers", s.index, len(s.exits), self.cfg.flap_window,
                  self.cfg.park_seconds)
        self.hand_over_claims(s.index)

    def note_claim_in_flight(self, slot: int) -> None:
        """Count consecutive worker deaths on the same claim (poison-batch detection)."""
        sup, live = self.inst.sup, self.inst.live
        ring, start = int(live(slot).claim_ring), int(live(slot).claim_start)
        if ring < 0:
            sup(slot).crash_count = 0
        elif (ring, start) == (int(sup(slot).crash_ring), int(sup(slot).crash_start)):
            sup(slot).crash_count += 1
        else:
            sup(slot).crash_ring, sup(slot).crash_start, sup(slot).crash_count = ring, start, 1
        if ring >= 0:
            log.error("worker slot %d died while processing claim at ring %d position %d (%d time(s) in a row)",
                      slot, ring, start, int(sup(slot).crash_count))

    def hand_over_claims(self, slot: int) -> None:
        """Give a parked slot's open claims to a running slot (processed when it is idle).

        Except the claim its last worker died inside: that one may already
        be in the slot's shard and write-ahead log (a death between the
        append and the commit), and another slot inserting it too would put
        the same ids in two shards. It stays with the slot, whose next worker
        (after the parking) replays its log and processes it again in the
        same shard, where a second insert of an id is an update."""
        sup, live = self.inst.sup, self.inst.live
        heirs = [s.index for s in self.slots if s.index != slot and int(sup(s.index).state) == RUNNING]
        if not heirs:
            return  # the slot's own replacement processes them when it is unparked
        heir = heirs[slot % len(heirs)]
        ring, pos = int(live(slot).claim_ring), int(live(slot).claim_start)
        moved = sum(len(r.reassign(slot, heir, keep=pos if r.ring_id == ring else None))
                    for r in self.inst.rings)
        if moved:
            log.info("handed %d open claim(s) of parked slot %d to slot %d%s", moved, slot, heir,
                     f" (the claim at ring {ring} position {pos} it died in stays with it)" if ring >= 0 else "")

    def kill_hung(self) -> None:
        now = self.clock()
        live = self.inst.live
        for s in self.slots:  # the exporter has no heartbeat; workers do
            if s.proc is None or s.killed_as_hung:
                continue
            last = max(float(live(s.index).heartbeat), s.spawned_at)
            if now - last > self.cfg.worker_timeout:
                log.error("worker slot %d (pid %d): no heartbeat for %.1fs; killing it", s.index, s.pid,
                          now - last)
                s.killed_as_hung = True
                try:
                    os.kill(s.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reconcile(self) -> None:
        if self.inst.header.stop:
            return
        now = self.clock()
        for s in self.children():
            if s.proc is not None:
                continue
            was_parked = bool(s.parked_until)
            if self.policy.due(s, now):
                if was_parked:
                    log.info("%s: parking over, restarting", s.label)
                self.spawn(s)

    def spawn(self, s: Child) -> None:
        inherited = [fd for fd in (self.lock.fileno() if self.lock else None, *self.signals.fds)
                     if fd is not None]
        if s.kind == "worker":
            from engine.worker import loop as worker
            target, args = worker.main, (s.index, self.cfg.name, s.cpu, inherited, os.getpid())
        elif s.kind == "cluster":  # DESIGN §11: the log follower
            from engine.cluster import follower
            target, args = follower.main, (self.cfg.name, inherited, os.getpid())
        elif s.kind == "gateway":
            from engine.gateway import server as gateway
            if getattr(self.cfg, "cluster", None):
                from engine.cluster import front as gateway
            target, args = gateway.main, (self.cfg.name, inherited, os.getpid())
        else:
            from engine.exporter import server as exporter
            target, args = exporter.main, (self.cfg.name, self.cfg.metrics_addr, inherited, os.getpid())
        restart = s.spawned_at > 0
        proc = self._ctx.Process(target=target, args=args, name=f"engram-{s.kind}", daemon=False)
        proc.start()
        s.proc, s.pid, s.spawned_at = proc, proc.pid, self.clock()
        if restart:
            log.info("%s restarted as pid %d", s.label, proc.pid)
        if s.kind != "worker":
            return
        sup = self.inst.sup
        sup(s.index).pid = proc.pid
        sup(s.index).state = STARTING
        sup(s.index).started_at = int(time.time() * 1000)
        if restart:
            sup(s.index).restarts += 1
            self.metrics.inc("worker_restarts_total", worker_id=s.index, reason=s.last_reason)

    def publish(self) -> None:
        """Slot states and readiness, and the backpressure state when idle."""
        sup, live = self.inst.sup, self.inst.live
        for s in self.slots:
            if s.proc is not None and int(sup(s.index).state) == STARTING \
                    and int(live(s.index).pid) == s.pid:
                sup(s.index).state = RUNNING
        now = self.clock()
        for s in self.slots:
            up = self.inst.slot_up(s.index, now)
            self.metrics.set("worker_up", 1.0 if up else 0.0, worker_id=s.index)
        running = all(int(sup(s.index).state) == RUNNING for s in self.slots)
        self.inst.header.ready = 1 if running else 0
        pressure.refresh(self.inst, self._transition)

    def _transition(self, old: int, new: int) -> None:
        from engine.control.admission import STATES
        self.metrics.inc("backpressure_activations_total", level=STATES[new])

    def check_drain(self) -> None:
        if self.draining_since is None or self.exit_code is not None:
            return
        left = sum(self.inst.queued_by_lane())
        timed_out = self.clock() - self.draining_since > self.cfg.graceful_timeout
        if left and not timed_out:
            return
        if left:
            self.exit_reason = (f"drain timed out after {self.cfg.graceful_timeout:.0f}s with {left} "
                                f"observation(s) still queued; they were not inserted")
            log.error("%s; stopping anyway", self.exit_reason)
        else:
            self.exit_reason = "queues drained"
            log.info("queues drained; stopping workers")
        self.stop_workers()
        self.exit_code = EXIT_DRAIN_TIMEOUT if left else EXIT_OK

    def stop_workers(self) -> None:
        self.inst.header.stop = 1
        for sig in self.inst.wake:
            sig.post()
        # Workers write a final snapshot before they exit: as long as a drain may take.
        deadline = self.clock() + max(STOP_GRACE_S, self.cfg.graceful_timeout)
        while self.clock() < deadline and any(s.proc is not None for s in self.slots):
            self.wait(TICK_S)
            self.reap()
        self.kill_all()

    def kill_all(self) -> None:
        for s in self.children():
            if s.proc is not None:
                try:
                    os.kill(s.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                s.proc.join(5)
                s.proc = None

    # -- teardown ----------------------------------------------------------
    def teardown(self) -> None:
        """Safe after a half-finished setup: undo whatever exists."""
        if any(s.proc is not None for s in self.children()):
            self.kill_all()
        if self.inst is not None:
            self.inst.close()
            self.inst.unlink()
            self.inst = None
        self.signals.uninstall()
        if self.lock is not None:
            if self.metrics is not None:  # the instance was created: this run has an ending to record
                self.write_exit_record()
            self.lock.release()
            self.lock = None

    def write_exit_record(self) -> None:
        """``<data-dir>/last-exit.json``: how the last run ended (read by ``stop``)."""
        record = {"exit_code": self.exit_code if self.exit_code is not None else EXIT_ERROR,
                  "reason": self.exit_reason or "supervisor failed", "pid": os.getpid(),
                  "time": time.time()}
        path = os.path.join(self.cfg.data_dir, "last-exit.json")
        try:
            with open(path + ".tmp", "w") as fh:
                json.dump(record, fh)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc)
