"""The supervisor's steps with fake children and an injected clock.

A real instance (shared memory in this process) and a real ``Supervisor``;
only the processes are fakes (``FakeSpawner``) and time is a number the test
moves, so reap, kill_hung, reconcile, the flap guard and the graceful stop
run in milliseconds without a fork.
"""

from __future__ import annotations

import argparse
import signal
import uuid

import numpy as np
import pytest

from engine import config, exitcodes
from engine.control.records import DOWN, PARKED, RUNNING, STARTING, STOPPED, WORKER
from engine.producer.api import Engine
from engine.supervisor import spill
from engine.supervisor.arbiter import Supervisor
from metrics import readout
from shm.segment import instance_objects, remove_instance_objects

DIM = 8


class FakeProc:
    def __init__(self, pid: int):
        self.pid = pid
        self.exitcode = None

    def join(self, timeout=None) -> None:
        pass


class FakeSpawner:
    """Records what the supervisor starts and signals; a signal ends the fake process."""

    def __init__(self):
        self.started: list[tuple[str, int, FakeProc]] = []
        self.signals: list[tuple[str, int]] = []
        self.next_pid = 40000

    def start(self, child, cfg, inherited):
        proc = FakeProc(self.next_pid)
        self.next_pid += 1
        self.started.append((child.kind, child.index, proc))
        return proc

    def signal(self, child, sig: int) -> None:
        if child.proc is None:
            return
        self.signals.append((child.label, sig))
        child.proc.exitcode = -sig

    def kill(self, child) -> None:
        self.signal(child, signal.SIGKILL)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sv(tmp_path):
    name = "sv" + uuid.uuid4().hex[:10]
    ns = argparse.Namespace(config_file=None, **{s.attr: None for s in config.SETTINGS})
    ns.name, ns.data_dir, ns.dim, ns.workers = name, str(tmp_path / "data"), str(DIM), "2"
    ns.metrics_addr, ns.grpc_addr, ns.capacity_normal = "127.0.0.1:0", "127.0.0.1:0", "1000"
    ns.worker_timeout, ns.graceful_timeout, ns.flap_restarts, ns.flap_window = "5", "3", "3", "60"
    ns.no_pin = True
    cfg = config.resolve(ns, "run", env={})
    clock = Clock()
    sup = Supervisor(cfg, FakeSpawner(), clock=clock, wall=lambda: 1.7e9 + clock.t)

    def wait(seconds: float) -> None:
        """Time passes only when the supervisor waits; workers told to stop exit meanwhile."""
        clock.t += seconds
        if sup.inst is not None and sup.inst.header.stop and not getattr(sup, "stragglers", False):
            for s in sup.slots:
                if s.proc is not None:
                    s.proc.exitcode = 0
    sup.wait = wait
    sup.setup(install_signals=False)
    try:
        yield sup
    finally:
        sup.teardown()
        remove_instance_objects(name)
        assert not instance_objects(name)


def come_up(sv, slot: int) -> None:
    """Play the worker of ``slot``: publish its pid and a fresh heartbeat, as a real one does."""
    live = sv.inst.as_role(WORKER, slot).live(slot)
    live.heartbeat = sv.clock()
    live.pid = sv.slots[slot].pid


def test_reconcile_starts_every_child_and_publish_marks_running_ones(sv):
    sv.step()
    kinds = sorted((k, i) for k, i, _ in sv.spawner.started)
    assert kinds == [("exporter", -1), ("gateway", -1), ("prober", -1), ("worker", 0), ("worker", 1)]
    assert [sv.inst.sup(s).state for s in (0, 1)] == [STARTING, STARTING]
    assert sv.inst.sup(0).pid == sv.slots[0].pid != 0
    come_up(sv, 0)
    sv.step()
    assert [sv.inst.sup(s).state for s in (0, 1)] == [RUNNING, STARTING]
    assert sv.inst.header.ready == 0
    come_up(sv, 1)
    sv.step()
    assert sv.inst.header.ready == 1
    sv.step()
    assert len(sv.spawner.started) == 5  # nothing started twice


def test_a_dead_worker_is_reaped_and_restarted_after_its_backoff(sv):
    sv.step()
    for s in (0, 1):
        come_up(sv, s)
    sv.step()
    old = sv.slots[0].proc
    old.exitcode = -9
    sv.reap()
    assert sv.inst.sup(0).state == DOWN and sv.inst.sup(0).pid == 0 and sv.slots[0].proc is None
    sv.reconcile()
    assert sv.slots[0].proc is None  # backing off (0.1 s after a first crash)
    sv.clock.t += 0.2
    sv.reconcile()
    assert sv.slots[0].proc is not None and sv.slots[0].proc is not old
    assert sv.inst.sup(0).restarts == 1 and sv.inst.sup(0).state == STARTING
    block = readout.block(sv.inst.metrics, sv.inst.metrics.snapshot(), "worker_restarts_total")
    assert block.sum() == 1


def test_kill_hung_kills_a_silent_worker_and_reap_names_the_reason(sv):
    sv.step()
    for s in (0, 1):
        come_up(sv, s)
    sv.step()
    sv.clock.t += 4.0
    come_up(sv, 1)  # slot 1 keeps beating, slot 0 is silent
    sv.kill_hung()
    assert sv.spawner.signals == []
    sv.clock.t += 2.0  # slot 0: 6 s > --worker-timeout 5
    sv.kill_hung()
    assert sv.spawner.signals == [("worker slot 0", signal.SIGKILL)]
    sv.kill_hung()
    assert len(sv.spawner.signals) == 1  # killed once
    sv.reap()
    assert sv.slots[0].last_reason == "hung" and sv.inst.sup(0).state == DOWN


def test_flapping_parks_a_slot_but_never_the_last_one_that_can_run(sv):
    sv.step()
    for crash in range(3):  # --flap-restarts 3
        for s in (0, 1):
            sv.slots[s].proc.exitcode = 1
        sv.reap()
        sv.clock.t += 20.0
        sv.reconcile()
    states = {s: sv.inst.sup(s).state for s in (0, 1)}
    assert sorted(states.values()) == sorted([PARKED, STARTING]), states
    running = next(s for s in (0, 1) if states[s] != PARKED)
    assert sv.slots[running].proc is not None  # degraded but serving


def test_drain_check_waits_for_the_queues_then_stops_in_order(sv):
    sv.step()
    for s in (0, 1):
        come_up(sv, s)
    sv.step()
    sv.shutdown.begin()
    assert sv.inst.header.admission_closed == 1
    sv.shutdown.check()
    assert sv.exit_code is None or sv.exit_code == exitcodes.OK
    # Nothing was queued: the drain is over at once; workers were asked to
    # stop, then the services got SIGTERM (after the workers were gone).
    assert sv.inst.header.stop == 1 and sv.exit_code == exitcodes.OK
    order = [label for label, _ in sv.spawner.signals]
    assert order[-3:] == ["gateway", "prober", "exporter"]
    assert all(sig == signal.SIGTERM for label, sig in sv.spawner.signals if label in ("gateway", "prober", "exporter"))
    assert [sv.inst.sup(s).state for s in (0, 1)] == [STOPPED, STOPPED]


def test_a_drain_that_times_out_saves_the_backlog_for_the_next_start(sv, tmp_path):
    sv.step()
    for s in (0, 1):
        come_up(sv, s)
    sv.step()
    eng = Engine(sv.inst.as_role("producer"))
    vecs = np.random.default_rng(1).standard_normal((300, DIM)).astype(np.float32)
    assert eng.observe("backlog", np.arange(300), vecs).accepted == 300
    sv.shutdown.begin()
    sv.shutdown.check()
    assert sv.exit_code is None  # still queued, still within --graceful-timeout 3
    sv.clock.t += 3.5
    sv.shutdown.check()
    assert sv.exit_code == exitcodes.BACKLOG
    assert "300 queued observation(s) were saved" in sv.exit_reason
    saved = spill.load(sv.cfg.data_dir, 2, DIM)
    ids = np.sort(np.concatenate([x.ids for x in saved]))
    assert ids.tolist() == list(range(300)) and {x.space for x in saved} == {"backlog"}
    by_id = {int(i): v for x in saved for i, v in zip(x.ids, x.vectors)}
    assert np.array_equal(np.stack([by_id[i] for i in range(300)]), vecs)


def test_spill_dedupe_drops_what_a_carry_over_already_holds():
    from engine.supervisor.salvage import Leftover
    v = np.zeros((4, DIM), np.float32)
    saved = [Leftover(0, 1, None, "a", np.arange(4, dtype=np.uint64), v)]
    carried = [Leftover(1, 1, None, "a", np.array([1, 2], np.uint64), v[:2]),
               Leftover(0, 1, None, "b", np.array([3], np.uint64), v[:1])]
    (left,) = spill.dedupe(saved, carried)
    assert left.ids.tolist() == [0, 3]  # id 3 of space b is another observation


def test_a_damaged_spill_file_is_refused_with_its_path(tmp_path):
    from engine.errors import SpillError
    from engine.supervisor.salvage import Leftover
    data = str(tmp_path)
    spill.save(data, [Leftover(0, 1, None, "a", np.arange(3, dtype=np.uint64), np.ones((3, DIM), np.float32))])
    assert len(spill.load(data, 1, DIM)[0].ids) == 3
    with pytest.raises(SpillError, match="--dim"):
        spill.load(data, 1, DIM + 1)
    with pytest.raises(SpillError, match="--workers"):
        spill.load(data, 0, DIM)
    path = spill.path(data)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(SpillError, match="spill.npz"):
        spill.load(data, 1, DIM)
