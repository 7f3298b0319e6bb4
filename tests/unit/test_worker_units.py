"""The worker loop driven in-process over a real instance's shared memory.

No processes: two ``Worker`` objects stand for two slots (STYLE §7), with an
injected clock where heartbeats matter.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import numpy as np
import pytest

from engine import config
from engine.control.layouts import LANE_INDEX
from engine.control.records import RUNNING, WORKER
from engine.control.instance import Instance
from engine.producer.api import Engine
from engine.producer.routing import home_slot
from engine.worker.shards import ShardSet
from engine.supervisor.preflight import instance_params
from engine.worker.loop import Worker
from metrics import readout
from shm.lock import InstanceLock
from shm.segment import instance_objects, remove_instance_objects

DIM = 8


@pytest.fixture
def inst(tmp_path):
    name = "u" + uuid.uuid4().hex[:10]
    ns = argparse.Namespace(config_file=None, **{s.attr: None for s in config.SETTINGS})
    ns.name, ns.data_dir, ns.dim, ns.workers = name, str(tmp_path), str(DIM), "2"
    ns.capacity_normal, ns.steal_threshold, ns.batch_max = "4000", "100", "50"
    cfg = config.resolve(ns, "run", env={})
    instance = Instance.create(instance_params(cfg, 2, [None, None]))
    instance.header.sup_pid = os.getpid()  # this process stands in for the supervisor:
    instance_lock = InstanceLock(os.path.join(instance.params.data_dir, "LOCK"))  # its pid, its lock and its run id
    assert instance_lock.try_acquire(run_id=1)
    instance.header.run_id = 1  # the run id producers check the lock against
    try:
        yield instance
    finally:
        instance.close()
        instance_lock.release()
        remove_instance_objects(name)
        assert not instance_objects(name)


def make_worker(inst, slot, clock=None, shards=None):
    w = Worker(inst.as_role(WORKER, slot), slot, shards or ShardSet(DIM, "cosine", 16, 100, 32, 64), **({"clock": clock} if clock else {}))
    inst.sup(slot).state = RUNNING
    w.start()
    return w


def metric(inst, name, **labels):
    """A counter or gauge summed over the rows of every writer, restricted to
    the label values given (``memory_space`` as a space index, ``worker_id``
    as a slot) and summed over the labels not given."""
    array = inst.metrics
    p = array.cellmap.placement(name)
    if p.width != 1:
        raise ValueError(f"{name} is a histogram: use readout.histogram")
    unknown = set(labels) - {d.label for d in p.dims}
    if unknown:
        raise ValueError(f"{name} has no label {sorted(unknown)} (labels: {[d.label for d in p.dims]})")
    block = readout.block(array, array.snapshot(), name)[..., 0]  # one axis per label, in catalog order
    where = tuple(array.cellmap.label_index(p, d, labels[d.label]) if d.label in labels else slice(None)
                  for d in p.dims)
    return float(block[where].sum())


def drain(worker):
    n = 0
    while (claim := worker.next_claim()) is not None:
        worker.process(claim)
        n += 1
    return n


def space_homed_at(slot, slots=2):
    return next(f"space-{i}" for i in range(100) if home_slot(f"space-{i}", slots) == slot)


def test_a_batch_is_inserted_committed_and_recorded(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    vecs = np.random.default_rng(0).standard_normal((120, DIM)).astype(np.float32)
    assert eng.observe(space, np.arange(120), vecs, priority="low").accepted == 120
    w = make_worker(inst, 0)
    batches = drain(w)
    ring = inst.ring(0, LANE_INDEX["low"])
    assert ring.tail == ring.head == 120
    idx = eng.spaces.lookup(space)
    assert w.shards.count(idx) == 120
    assert metric(inst, "observations_total", memory_space=idx, priority="low") == 120
    assert metric(inst, "observations_total", memory_space=idx, priority="normal") == 0
    assert metric(inst, "observations_total") == 120  # and nowhere else
    assert metric(inst, "batches_processed_total", worker_id=0) == batches
    assert metric(inst, "batches_processed_total", worker_id=1) == 0
    bounds, counts, total = readout.histogram(inst.metrics, inst.metrics.snapshot(), "batch_size")
    assert counts.sum() == batches and total == 120
    assert readout.histogram(inst.metrics, inst.metrics.snapshot(), "observation_latency_seconds")[1].sum() == 120
    assert metric(inst, "index_vectors", memory_space=idx) == 120
    assert metric(inst, "index_vectors") == 120


def test_the_producer_stamps_enqueue_times_from_the_monotonic_clock(inst):
    """shm/ring.py: enq_time is what the producer passes; workers subtract it
    from their own time.monotonic(), so the producer must use that clock too."""
    eng = Engine(inst)
    space = space_homed_at(0)
    before = time.monotonic()
    assert eng.observe(space, np.arange(10), np.ones((10, DIM), np.float32)).accepted == 10
    after = time.monotonic()
    times = inst.ring(0, LANE_INDEX["normal"]).times[:10]
    assert ((before <= times) & (times <= after)).all(), (before, times, after)


def test_a_failed_batch_is_counted_left_claimed_and_redone_by_the_next_owner(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    vecs = np.random.default_rng(1).standard_normal((30, DIM)).astype(np.float32)
    eng.observe(space, np.arange(30), vecs)

    class Broken(ShardSet):
        def insert(self, *a):
            raise RuntimeError("simulated insert failure")

    broken = make_worker(inst, 0, shards=Broken(DIM, "cosine", 16, 100, 32, 64))
    claim = broken.next_claim()
    with pytest.raises(RuntimeError, match="simulated"):
        broken.process(claim)
    assert metric(inst, "batch_failures_total", worker_id=0, error_type="insert_error") == 1
    assert metric(inst, "batch_failures_total") == 1
    ring = inst.ring(0, LANE_INDEX["normal"])
    assert ring.open_claimers() == {0} and ring.tail == 0
    # The replacement of slot 0 finds the claim recorded under its slot.
    heir = make_worker(inst, 0)
    drain(heir)
    assert heir.shards.count(eng.spaces.lookup(space)) == 30
    assert ring.tail == ring.head == 30 and ring.open_claimers() == set()


def test_idle_worker_steals_about_half_above_the_threshold(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    vecs = np.random.default_rng(2).standard_normal((1000, DIM)).astype(np.float32)
    eng.observe(space, np.arange(1000), vecs)
    owner, thief = make_worker(inst, 0), make_worker(inst, 1)
    claims = thief.steal()
    taken = sum(c.count for c in claims)
    assert 0 < taken <= 500 and all(c.count <= 50 for c in claims)
    assert metric(inst, "work_stolen_total", worker_id=1) == len(claims)
    assert metric(inst, "work_stolen_total", worker_id=0) == 0
    for c in claims:
        thief.process(c)
    drain(owner)
    assert metric(inst, "batches_processed_total", worker_id=1) == len(claims)  # one batch per stolen claim
    idx = eng.spaces.lookup(space)
    assert owner.shards.count(idx) + thief.shards.count(idx) == 1000
    assert thief.shards.count(idx) == taken


def test_no_stealing_below_threshold_unless_the_owner_is_absent(inst):
    now = [1000.0]
    eng = Engine(inst)
    space = space_homed_at(0)
    eng.observe(space, np.arange(40), np.ones((40, DIM), np.float32))
    make_worker(inst, 0, clock=lambda: now[0])
    thief = make_worker(inst, 1, clock=lambda: now[0])
    assert thief.steal() == []  # 40 <= threshold 100 and slot 0 heartbeats
    now[0] += 5.0  # slot 0 silent for 5 s: absent
    thief.live.heartbeat = now[0]
    claims = thief.steal()
    assert sum(c.count for c in claims) == 40  # an absent owner's ring is taken whole


def test_space_index_out_of_range_in_a_ring_is_refused(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    eng.observe(space, np.arange(5), np.ones((5, DIM), np.float32))
    ring = inst.ring(0, LANE_INDEX["normal"])
    ring.spaces[:5] = 10 ** 6  # corrupt: no such space
    w = make_worker(inst, 0)
    with pytest.raises(ValueError, match="outside"):
        w.process(w.next_claim())
    assert metric(inst, "batch_failures_total", worker_id=0, error_type="other") == 1
    assert metric(inst, "batch_failures_total") == 1


def test_queries_are_answered_between_slices_of_one_batch(inst):
    from engine.control.query import REQ_EF, REQ_K, REQ_NQ, REQ_SEQ, REQ_SPACE
    eng = Engine(inst)
    space = space_homed_at(0)
    vecs = np.random.default_rng(3).standard_normal((50, DIM)).astype(np.float32)
    eng.observe(space, np.arange(50), vecs)
    w = make_worker(inst, 0)
    w.sizer.record(1, 0.004)  # 4 ms per item: 5 ms slices hold one item each
    claim = w.next_claim()
    assert claim.count > 1  # several slices in one batch
    q = inst.query  # a recall request for this space, as a client writes it
    q["vectors"][0, 0] = vecs[7]
    req = q["req"][0]
    req[REQ_SPACE], req[REQ_NQ], req[REQ_K], req[REQ_EF] = eng.spaces.lookup(space), 1, 1, 16
    req[REQ_SEQ] = 1
    q["want"][0, 0] = 1
    w.process(claim)  # process() alone answers only between slices of the batch
    assert q["done"][0, 0] == 1
    assert 0 < q["cols"][0, 0] <= 1
    assert w.sizer.seconds_per_item > 0


def test_parked_slot_keeps_the_claim_its_worker_died_in(inst):
    """Handing a parked slot's claims to another slot must not hand over the
    claim the dead worker may already have logged (its ids would then sit in
    two shards); the others go."""
    from engine.supervisor.claims import hand_over
    eng = Engine(inst)
    space = next(f"space-{i}" for i in range(100) if home_slot(f"space-{i}", 2) == 0)
    rng = np.random.default_rng(3)
    assert eng.observe(space, np.arange(100), rng.standard_normal((100, DIM)).astype(np.float32)).accepted == 100
    ring = inst.ring(0, LANE_INDEX["normal"])
    claims = ring.claim_many(100, 20, claimer=0)
    assert len(claims) == 5
    died_in = claims[2]
    live, sup = inst.as_role(WORKER, 0).live, inst.sup  # this process plays the dead worker of slot 0
    live(0).claim_ring, live(0).claim_start = died_in.ring, died_in.start + 3
    sup(1).state = RUNNING
    claims_moved = hand_over(inst, 0, [0, 1])
    assert claims_moved == 4
    assert [c.start for c in ring.claims_of(0)] == [died_in.start]
    assert sorted(c.start for c in ring.claims_of(1)) == sorted(c.start for c in claims if c != died_in)
    live(0).claim_ring = -1  # a worker that died between claims: everything goes
    hand_over(inst, 0, [0, 1])
    assert ring.claims_of(0) == [] and len(ring.claims_of(1)) == 5
