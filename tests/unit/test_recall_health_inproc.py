"""Breakers and probes over a real instance's shared memory, in one process.

Workers are ``Worker`` objects driven by threads (STYLE §7); a worker that
"heartbeats but never answers" is one started with a clock far ahead that
never steps, which no real-process test could hold steady.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

import numpy as np
import pytest

from engine import config
from engine.control import recallstate
from engine.control.instance import Instance
from engine.control.records import (OPEN, PROBE_HEALTHY, PROBE_UNHEALTHY, PROBE_WRONG_ANSWER, PROBER, RUNNING,
                                    WORKER)
from engine.prober.main import Prober
from engine.producer.api import Engine
from engine.recallhealth.probeset import ProbeShard
from engine.recallhealth.report import recall_health
from engine.supervisor.preflight import instance_params
from engine.worker.loop import Worker
from engine.worker.shards import ShardSet
from metrics import readout
from shm.lock import InstanceLock
from shm.segment import instance_objects, remove_instance_objects

DIM = 8


@pytest.fixture
def inst(tmp_path):
    name = "h" + uuid.uuid4().hex[:10]
    ns = argparse.Namespace(config_file=None, **{s.attr: None for s in config.SETTINGS})
    ns.name, ns.data_dir, ns.dim, ns.workers = name, str(tmp_path), str(DIM), "2"
    cfg = config.resolve(ns, "run", env={})
    instance = Instance.create(instance_params(cfg, 2, [None, None]))
    instance.header.sup_pid = os.getpid()  # this process stands in for the supervisor:
    instance_lock = InstanceLock(os.path.join(instance.params.data_dir, "LOCK"))  # its lock and run id
    assert instance_lock.try_acquire(run_id=1)
    instance.header.run_id = 1
    recallstate.init(instance)
    try:
        yield instance
    finally:
        instance.close()
        remove_instance_objects(name)
        assert not instance_objects(name)


class Running:
    """Workers stepping in threads until ``stop``."""

    def __init__(self, workers):
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(w,), daemon=True) for w in workers]
        for t in self.threads:
            t.start()

    def _loop(self, w):
        while not self.done.is_set():
            w.step()

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(5)


def worker(inst, slot, clock=None, corrupt=False):
    kw = {"clock": clock} if clock else {}
    w = Worker(inst.as_role(WORKER, slot), slot, ShardSet(DIM, "cosine", 16, 100, 32, 64),
               probe_shard=ProbeShard(DIM, "cosine", 16, 100, _corrupt=corrupt), **kw)
    inst.sup(slot).state = RUNNING
    w.start()
    return w


def fill(w, space, n, seed):
    vecs = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    ids = np.arange(seed * 1000, seed * 1000 + n, dtype=np.uint64)
    w.book.table.apply(space, ids, np.ones(n, np.uint64), w.slot)  # held here, as a worker's insert records it
    w.counts[space] = w.shards.insert(space, ids, vecs)


def test_breaker_opens_on_a_slot_that_heartbeats_but_never_answers(inst):
    eng = Engine(inst.as_role("producer"))
    space = eng.spaces.register("mixed")
    good = worker(inst, 0)
    ahead = time.monotonic() + 3600
    silent = worker(inst, 1, clock=lambda: ahead)  # heartbeat stays fresh; never steps
    fill(good, space, 50, 1)
    fill(silent, space, 50, 2)
    run = Running([good])
    try:
        q = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
        waited = []
        for _ in range(eng.breakers.policy.min_samples + 1):
            t0 = time.monotonic()
            res = eng.recall("mixed", q, k=5, timeout=0.1)
            waited.append(time.monotonic() - t0)
            assert not res.complete
            if res.skipped:
                break
        assert int(recallstate.breaker(inst, 1).state) == OPEN
        assert len(waited) == eng.breakers.policy.min_samples + 1 and waited[-1] < 0.05
        assert min(waited[:-1]) >= 0.1  # until it opened, each recall waited out its deadline
        t0 = time.monotonic()
        res = eng.recall("mixed", q, k=5, timeout=5.0)
        assert time.monotonic() - t0 < 0.5
        assert not res.complete and res.skipped == (1,) and res.ids.shape[1] == 5
        assert int(recallstate.breaker(inst, 0).state) != OPEN
        snap = inst.metrics.snapshot()
        assert readout.block(inst.metrics, snap, "recall_breaker_short_circuits_total").sum() >= 1
        assert readout.block(inst.metrics, snap, "recall_breaker_transitions_total").sum() >= 1
    finally:
        run.stop()
        eng.breakers.enabled = False
        eng.close()


def test_corrupted_probe_shard_is_reported_as_wrong_answers(inst):
    healthy, corrupt = worker(inst, 0), worker(inst, 1, corrupt=True)
    run = Running([healthy, corrupt])
    try:
        prober = Prober(inst.as_role(PROBER))
        for _ in range(3):
            prober.probe_all()
    finally:
        run.stop()
    bad, ok = recallstate.probe(inst, 1), recallstate.probe(inst, 0)
    assert int(bad.state) == PROBE_UNHEALTHY and int(bad.last_reason) == PROBE_WRONG_ANSWER
    assert float(bad.last_latency) < inst.params.probe_budget_ms / 1000  # fast, but wrong
    assert int(ok.state) == PROBE_HEALTHY and int(ok.failures) == 0
    report = recall_health(inst)
    assert not report["ok"] and report["slots"][1]["last_failure_reason"] == "wrong_answer"
    assert "1" in report["reason"]
