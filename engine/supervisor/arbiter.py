"""The supervisor: creates shared memory, spawns and watches the children.

Main loop (gunicorn's arbiter shape; each step small, idempotent, testable)::

    wait (select on the signal wake-up pipe, timeout TICK_S)
    → handle_signals → reap → kill_hung → reconcile → publish → drain/stop

Signal handlers only append to a list (``engine.signals``); the wake-up fd
makes the wait return at once. Children are started by an injected spawner
(``engine.supervisor.spawner``: forks in production, fakes in unit tests)
and every time comes from the injected ``clock``/``wall``, so each step
runs in a test without processes. Workers are forked before any thread
exists here, and set themselves up after the fork.

Restart policy (``children.RestartPolicy``): a dead worker is restarted
after an exponential backoff; a slot that crashes too often is parked (never
the last slot still running: the engine degrades instead of stopping), its
open claims are handed to a running slot (``claims``) and its queued records
are drained by stealing. Start-up checks live in ``preflight``; the stop in
``stopping``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time

from engine import exitcodes, identity
from engine.control import pressure
from engine.control import recallstate
from engine.supervisor.autotune import AutoTune
from engine.ledger.stamps import Ceiling
from shm.errors import LockTimeout
from engine.ledger.tombstones import Tombstones
from engine.control.instance import Instance
from engine.control.records import DOWN, PARKED, RUNNING, STARTING, STOPPED
from engine.errors import InstanceRunning
from engine.signals import SignalQueue
from engine.supervisor import claims, salvage, spill
from engine.supervisor.children import Child, RestartPolicy
from engine.supervisor.preflight import (check_bindable, check_gateway_files, check_name_free, check_shm_room,
                                         check_wal_manifest, instance_params, plan_cpus, write_wal_manifest)
from engine.supervisor.stopping import TICK_S, Shutdown, write_exit_record
from shm.lock import InstanceLock
from shm.segment import remove_instance_objects

log = logging.getLogger("engram.supervisor")


class Supervisor:
    def __init__(self, cfg, spawner, clock=time.monotonic, wall=time.time, checks=()):
        """``checks``: more start-up checks, each ``check(params)`` raising
        ConfigError (the CLI passes the data directory's, from storage)."""
        self.cfg = cfg
        self.spawner = spawner
        self.checks = tuple(checks)
        self.clock = clock
        self.wall = wall
        self.inst: Instance | None = None
        self.lock: InstanceLock | None = None
        self.slots: list[Child] = []
        self.exporter = Child(-1, None, kind="exporter")
        self.gateway = Child(-1, None, kind="gateway") if cfg.grpc_addr != "off" else None
        self.prober = Child(-1, None, kind="prober")  # recall probes (engine.prober)
        self.autotune = None  # engine.supervisor.autotune, made in setup
        self.ceiling = None  # engine.ledger.stamps.Ceiling, made in setup
        self.tombstones = None  # engine.ledger.tombstones.Tombstones, made in setup
        self.cluster = Child(-1, None, kind="cluster") if getattr(cfg, "cluster", None) else None
        self.policy = RestartPolicy(cfg.flap_restarts, cfg.flap_window, cfg.park_seconds,
                                    cfg.restart_backoff_max)
        self.metrics = None
        self.signals = SignalQueue()
        self.shutdown = Shutdown(self)
        self.exit_code: int | None = None
        self.exit_reason = ""

    # -- setup -------------------------------------------------------------
    def setup(self, install_signals: bool = True) -> None:
        cfg = self.cfg
        identity.become("supervisor", cfg.name)  # children inherit it until they name themselves
        n, cpus = plan_cpus(cfg)
        os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
        os.chmod(cfg.data_dir, 0o700)
        self.lock = InstanceLock(os.path.join(cfg.data_dir, "LOCK"))
        run_id = secrets.randbits(62) + 1  # never 0: 0 means "no run" in the header
        if not self.lock.acquire_within(1.0, run_id):
            holder = self.lock.holder_pid()
            raise InstanceRunning(f"data directory {os.path.abspath(cfg.data_dir)} is in use by another "
                                  f"engram instance (pid {holder})")
        stale = check_name_free(cfg.name, cfg.data_dir)
        params = instance_params(cfg, n, cpus)
        check_shm_room(params)
        check_bindable(cfg.metrics_addr, "--metrics-addr")
        if cfg.grpc_addr != "off":
            check_bindable(cfg.grpc_addr, "--grpc-addr")
            check_gateway_files(cfg)
        check_wal_manifest(params.data_dir, params)
        for check in self.checks:
            check(params)
        saved = spill.load(cfg.data_dir, n, cfg.dim)  # refuses a damaged file before anything changes
        write_wal_manifest(params.data_dir, params)
        carried = []
        if stale:
            carried = salvage.collect(cfg.name, n, cfg.dim)
            removed = remove_instance_objects(cfg.name)
            log.warning("removed %d shared-memory object(s) left by a dead run of %r", len(removed), cfg.name)
        self.inst = Instance.create(params)
        self.ceiling = Ceiling(cfg.data_dir)
        self.ceiling.keep()
        self.inst.header.stamp_offset = self.ceiling.offset  # before any producer or worker stamps
        recallstate.init(self.inst)  # live settings start at the configured values
        salvage.restore(self.inst, carried)
        if saved:
            salvage.restore(self.inst, spill.dedupe(saved, carried), "saved by the last stop")
        spill.discard(cfg.data_dir)  # before any worker runs: the records are in the rings now
        hdr = self.inst.header
        hdr.run_id = run_id  # from here producers see this run live (engine.control.liveness)
        hdr.sup_pid = os.getpid()
        hdr.started = int(self.wall())
        self.slots = [Child(i, cpus[i]) for i in range(n)]
        from metrics.writer import MetricWriter
        self.metrics = MetricWriter(self.inst.metrics, self.inst.metrics.row_map.SUPERVISOR)
        if params.autotune == "on":
            self.autotune = AutoTune(self.inst, self.metrics, self.clock)
        self.tombstones = Tombstones(self.inst, self.ceiling.now, self.metrics)
        for s in self.slots:
            self.inst.sup(s.index).cpu = -1 if s.cpu is None else s.cpu
        if install_signals:
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
        if self.autotune is not None and not self.shutdown.draining:
            self.autotune.tick(self.clock())  # pure bookkeeping on shared memory: never blocks
        self.keep_ids()
        self.shutdown.check()

    def keep_ids(self) -> None:
        """Forget and upsert's upkeep: the stamp ceiling on disk, old tombstones."""
        if self.tombstones is None:
            return
        try:
            self.ceiling.keep()
        except OSError as exc:
            log.warning("could not write the stamp ceiling %s: %s", self.ceiling.path, exc)
        try:
            self.tombstones.tick(self.clock())
        except LockTimeout:
            pass  # the table's lock holder is stopped: the next tick tries again

    def handle_signals(self) -> None:
        while (sig := self.signals.pop()) is not None:
            if sig not in (signal.SIGTERM, signal.SIGINT):
                continue  # SIGCHLD only wakes the loop: reap looks at every child
            if not self.shutdown.draining:
                log.info("%s: stopping admission and draining queues (up to %.0fs)",
                         signal.Signals(sig).name, self.cfg.graceful_timeout)
                self.shutdown.begin()
            elif sig == signal.SIGINT:
                log.warning("second SIGINT: stopping now without draining")
                self.shutdown.finish(drained=False, why="forced stop by a second SIGINT",
                                     code=exitcodes.FORCED, patient=False)
                return

    def children(self) -> list[Child]:
        return self.slots + [c for c in (self.exporter, self.gateway, self.prober, self.cluster)
                             if c is not None]

    def reap(self) -> None:
        now = self.clock()
        stopping = bool(self.inst.header.stop)
        for s in self.children():
            if s.proc is None or s.proc.exitcode is None:
                continue
            code = s.proc.exitcode
            reason = "hung" if s.killed_as_hung else ("signal" if code < 0 else "crash")
            if s.kind == "worker":
                sup = self.inst.sup(s.index)
                sup.pid = 0
                if stopping:
                    sup.state = STOPPED
                else:
                    claims.note_death(self.inst, s.index)
            left = s.kind == "cluster" and code == 0 and self.shutdown.draining  # as it should
            if not stopping and not left:
                log.error("%s (pid %d) exited with %s; reason %s", s.label, s.pid,
                          f"signal {-code}" if code < 0 else f"code {code}", reason)
                s.last_reason = reason
                self._record_crash(s, now)
            s.proc, s.pid, s.killed_as_hung = None, 0, False

    def _record_crash(self, s: Child, now: float) -> None:
        # Never park the last slot that could run: no worker at all would
        # stop recall and ingestion for --park-seconds; a flapping engine is
        # degraded (restarts with backoff, alerts on restarts) but serving.
        others = [c for c in self.slots if c is not s and not c.parked_until]
        parked = self.policy.on_exit(s, now, may_park=s.kind == "worker" and bool(others))
        if s.kind != "worker":
            return
        sup = self.inst.sup(s.index)
        if not parked:
            sup.state = DOWN
            if not others and len(s.exits) >= self.cfg.flap_restarts:
                log.error("worker slot %d crashed %d times in %.0fs but is the last slot that can run: "
                          "restarting it with backoff instead of parking it", s.index, len(s.exits),
                          self.cfg.flap_window)
            return
        sup.state = PARKED
        sup.parked_until = int((self.wall() + self.cfg.park_seconds) * 1000)
        log.error("worker slot %d crashed %d times in %.0fs: parked for %.0fs; its queue is "
                  "drained by the other workers", s.index, len(s.exits), self.cfg.flap_window,
                  self.cfg.park_seconds)
        claims.hand_over(self.inst, s.index, [c.index for c in self.slots])

    def kill_hung(self) -> None:
        now = self.clock()
        for s in self.slots:  # the exporter and the gateway have no heartbeat; workers do
            if s.proc is None or s.killed_as_hung:
                continue
            last = max(self.inst.live(s.index).heartbeat, s.spawned_at)
            if now - last > self.cfg.worker_timeout:
                log.error("worker slot %d (pid %d): no heartbeat for %.1fs; killing it", s.index, s.pid,
                          now - last)
                s.killed_as_hung = True
                self.spawner.kill(s)

    def reconcile(self) -> None:
        if self.inst.header.stop:
            return
        now = self.clock()
        for s in self.children():
            if s.proc is not None:
                continue
            if s.kind == "cluster" and self.shutdown.draining:
                continue  # it left the cluster when admission closed (engine.cluster.follower)
            was_parked = bool(s.parked_until)
            if self.policy.due(s, now):
                if was_parked:
                    log.info("%s: parking over, restarting", s.label)
                self.spawn(s)

    def spawn(self, s: Child) -> None:
        inherited = [fd for fd in (self.lock.fileno() if self.lock else None, *self.signals.fds)
                     if fd is not None]
        restart = s.spawned_at > 0
        proc = self.spawner.start(s, self.cfg, inherited)
        s.proc, s.pid, s.spawned_at = proc, proc.pid, self.clock()
        if restart:
            log.info("%s restarted as pid %d", s.label, proc.pid)
        if s.kind != "worker":
            return
        sup = self.inst.sup(s.index)
        sup.pid = proc.pid
        sup.state = STARTING
        sup.started_at = int(self.wall() * 1000)
        if restart:
            sup.restarts += 1
            self.metrics.inc("worker_restarts_total", worker_id=s.index, reason=s.last_reason)

    def publish(self) -> None:
        """Slot states and readiness, and the backpressure state when idle."""
        for s in self.slots:
            sup = self.inst.sup(s.index)
            if s.proc is not None and sup.state == STARTING and self.inst.live(s.index).pid == s.pid:
                sup.state = RUNNING
        now = self.clock()
        for s in self.slots:
            self.metrics.set("worker_up", 1.0 if self.inst.slot_up(s.index, now) else 0.0, worker_id=s.index)
        running = all(self.inst.sup(s.index).state == RUNNING for s in self.slots)
        self.inst.header.ready = 1 if running else 0
        pressure.refresh(self.inst, self._transition)

    def _transition(self, old: int, new: int) -> None:
        from engine.control.admission import STATES
        self.metrics.inc("backpressure_activations_total", level=STATES[new])

    # -- teardown ----------------------------------------------------------
    def teardown(self) -> None:
        """Safe after a half-finished setup: undo whatever exists."""
        for s in self.children():
            if s.proc is not None:
                self.spawner.kill(s)
                s.proc.join(5)
                s.proc = None
        if self.inst is not None:
            self.inst.close()
            if self.shutdown.keep_shared_memory:
                log.warning("shared memory of %r kept: the next start carries its queued observations over",
                            self.cfg.name)
            else:
                self.inst.unlink()
            self.inst = None
        self.signals.uninstall()
        if self.lock is not None:
            if self.metrics is not None:  # the instance was created: this run has an ending to record
                write_exit_record(self.cfg.data_dir, self.exit_code, self.exit_reason)
            self.lock.release()
            self.lock = None
