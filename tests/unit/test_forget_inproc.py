"""Forget and upsert driven in-process: a producer and two ``Worker`` objects
over a real instance's shared memory (no processes, STYLE §7)."""

from __future__ import annotations

import numpy as np

from engine.control.layouts import LANE_INDEX
from engine.ledger import compaction, tombstones
from engine.ledger.tombstones import Tombstones
from engine.producer.api import Engine
from shm.idtable import ABSENT
from tests.unit.test_worker_units import DIM, drain, inst, make_worker, metric, space_homed_at  # noqa: F401


def vectors(n, seed):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def observe_drained(eng, space, vecs, worker):
    """Observe ids 0..len(vecs) in batches of 500, each inserted by ``worker`` before the next."""
    for lo in range(0, len(vecs), 500):
        eng.observe(space, np.arange(lo, lo + 500), vecs[lo:lo + 500])
        drain(worker)


def found(worker, space_idx, queries, k):
    ids, _ = worker.held_search(space_idx, queries, k, 64)
    return set(ids.ravel().tolist())


def test_forget_removes_ids_wherever_they_live_and_counts_them_out(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    w0, w1 = make_worker(inst, 0), make_worker(inst, 1)
    a, b = vectors(300, 1), vectors(300, 2)
    eng.observe(space, np.arange(300), a)
    drain(w0)
    # the next 300 land on slot 1 (as a stolen or spilled batch would)
    idx = eng.spaces.lookup(space)
    ring = inst.ring(1, LANE_INDEX["normal"])
    ring.enqueue(np.arange(300, 600, dtype=np.uint64), b, idx, 0.0, np.full(300, eng.clock.take(), np.uint64))
    drain(w1)
    assert inst.ids.held[:, idx].tolist() == [300, 300]
    gone = np.arange(0, 600, 2)
    res = eng.forget(space, gone, wait=False)
    assert (res.accepted, res.not_found) == (300, 0)
    drain(w0)
    drain(w1)
    assert inst.ids.held[:, idx].tolist() == [150, 150]
    w1.publish_changed()  # slot 0 applied the forgets of slot 1's ids: slot 1 sees its count change
    assert metric(inst, "index_vectors", memory_space=idx) == 300
    assert metric(inst, "forgets_total", memory_space=idx) == 300
    queries = np.vstack([a, b])
    seen = found(w0, idx, queries, 50) | found(w1, idx, queries, 50)
    assert not seen & set(gone.tolist())
    assert len(seen) == 300  # every live id is still found
    # forgetting again, or an id never observed: not found, not an error
    res = eng.forget(space, [0, 2, 10_000], wait=False)
    assert (res.accepted, res.not_found) == (3, 3)


def test_not_found_counts_in_acknowledged_order_what_is_still_queued(inst):
    """A forget's not_found takes the operations queued before it into account:
    a queued forget removes, a queued (re-)observation brings back, the
    newest of them decides, and the table's entry where nothing newer waits."""
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    eng.observe(space, np.arange(100), vectors(100, 3))
    drain(w0)
    assert eng.forget(space, np.arange(0, 40), wait=False).not_found == 0       # queued, not applied
    assert eng.forget(space, np.arange(20, 60), wait=False).not_found == 20     # 20..39 already forgotten
    eng.observe(space, np.arange(30, 35), vectors(5, 4))                          # queued after the forgets
    eng.observe(space, np.arange(200, 203), vectors(3, 5))                        # new ids, only queued
    res = eng.forget(space, np.arange(25, 40).tolist() + [200, 201, 500], wait=False)
    # 25..29 forgotten by a queued forget; 30..34 observed again after it; 35..39
    # forgotten; 200, 201 queued observations; 500 never observed
    assert (res.accepted, res.not_found) == (18, 5 + 5 + 1), res
    drain(w0)
    # applied now: the same questions answered by the table alone
    assert eng.forget(space, np.arange(25, 40).tolist() + [200, 201, 500], wait=False).not_found == 18
    drain(w0)
    assert int(inst.ids.held[:, eng.spaces.lookup(space)].sum()) == 100 - 60 + 1  # 202 is all that was added


def test_a_shard_full_of_copies_replaced_elsewhere_still_answers_every_row(inst):
    """Slot 0 keeps the old copies of 1,500 ids replaced on slot 1. Queries
    that meet only such copies must not cost the other rows their answers:
    each row gets this slot's held vectors, and together the slots answer
    every query with its own id."""
    from engine.producer.recall import merge
    eng = Engine(inst)
    space = space_homed_at(0)
    w0, w1 = make_worker(inst, 0), make_worker(inst, 1)
    n, moved = 2000, 1500
    old, new = vectors(n, 21), vectors(moved, 22)
    observe_drained(eng, space, old, w0)
    idx = eng.spaces.lookup(space)
    ring = inst.ring(1, LANE_INDEX["normal"])  # the replacements land on slot 1 (as stolen batches would)
    for lo in range(0, moved, 500):
        ids = np.arange(lo, lo + 500, dtype=np.uint64)
        assert ring.enqueue(ids, new[lo:lo + 500], idx, 0.0, np.full(500, eng.clock.take(), np.uint64)) == 500
        drain(w1)
    assert inst.ids.held[:, idx].tolist() == [n - moved, moved]
    queries = np.vstack([new, old[moved:]])
    want = np.arange(n, dtype=np.uint64)
    for k in (1, 5):
        ids0, dist0 = w0.held_search(idx, queries, k, 16)
        ids1, dist1 = w1.held_search(idx, queries, k, 16)
        held0 = inst.ids.holders(idx, ids0[np.isfinite(dist0)].astype(np.uint64))
        assert (held0 == 0).all()  # nothing foreign from slot 0
        assert (ids0[moved:, 0] == want[moved:]).all()  # its own rows answered, whatever the others met
        got, _ = merge([(ids0, dist0), (ids1, dist1)], n, k)
        assert got.shape == (n, k) and (got[:, 0] == want).all()


def test_a_forget_the_high_lane_takes_in_part_counts_only_what_it_misses(inst):
    """The part of a forget that went in is not counted as not found because
    of its own records, now queued ahead of the count."""
    from engine.ledger.book import FORGET
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    eng.observe(space, np.arange(100), vectors(100, 6))
    drain(w0)
    idx = eng.spaces.lookup(space)
    for slot in range(inst.slots):  # leave 15 places in each high ring
        ring = inst.ring(slot, LANE_INDEX["high"])
        junk = np.arange(ring.capacity - 15, dtype=np.uint64) + np.uint64(10**6 * (slot + 1))
        assert ring.enqueue(junk, None, idx, 0.0, np.full(len(junk), eng.clock.take(), np.uint64), FORGET) == len(junk)
    res = eng.forget(space, np.arange(100), wait=False)
    assert (res.accepted, res.not_found, res.rejected) == (30, 0, {"over_capacity": 70}), res


def test_writes_are_refused_while_stamps_would_pass_the_ceiling_on_disk(inst):
    """A stopped supervisor stops moving the ceiling; producers then refuse
    writes (counted, with the reason) rather than take a stamp past it."""
    import json
    import os

    from engine.ledger.stamps import FILE, Ceiling
    eng = Engine(inst)
    space = space_homed_at(0)
    assert eng.observe(space, np.arange(10), vectors(10, 7)).accepted == 10  # no file yet: no ceiling
    idx = eng.spaces.lookup(space)
    with open(os.path.join(inst.params.data_dir, FILE), "w") as fh:
        json.dump({"boot": "x", "offset": 0, "ceiling": 1}, fh)  # left by a supervisor that stopped long ago
    ack = eng.observe(space, np.arange(10, 20), vectors(10, 8))
    assert (ack.accepted, ack.rejected) == (0, {"over_capacity": 10}) and "ceiling" in ack.message, ack
    res = eng.forget(space, [1, 2], wait=False)
    assert (res.accepted, res.rejected) == (0, {"over_capacity": 2}) and "ceiling" in res.message, res
    assert metric(inst, "observations_rejected_total", memory_space=idx, reason="over_capacity") == 12
    Ceiling(inst.params.data_dir).keep()  # the supervisor runs again
    assert eng.observe(space, np.arange(10, 20), vectors(10, 8)).accepted == 10
    assert eng.forget(space, [1, 2], wait=False).accepted == 2


def test_a_forget_queued_after_an_observe_wins_whatever_lane_order_applies_them(inst):
    """The forget goes to the high lane and is applied first; the older
    observe that arrives after it loses (its stamp is older)."""
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    eng.observe(space, np.arange(10), vectors(10, 3), priority="low")
    eng.forget(space, np.arange(5), wait=False)
    claim = w0.next_claim()
    assert claim.ring == 0 * 3 + LANE_INDEX["high"]  # the forget comes out first
    w0.process(claim)
    drain(w0)
    idx = eng.spaces.lookup(space)
    assert inst.ids.holders(idx, np.arange(10, dtype=np.uint64)).tolist() == [-1] * 5 + [0] * 5
    assert found(w0, idx, vectors(10, 3), 10) == set(range(5, 10))
    # an observe after the forget brings the id back
    eng.observe(space, [3], vectors(1, 4))
    drain(w0)
    assert 3 in found(w0, idx, vectors(1, 4), 1)


def test_an_upsert_on_another_slot_retires_the_old_vector(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    w0, w1 = make_worker(inst, 0), make_worker(inst, 1)
    old, new = vectors(40, 5), vectors(40, 6)
    eng.observe(space, np.arange(40), old)
    drain(w0)
    idx = eng.spaces.lookup(space)
    inst.ring(1, LANE_INDEX["normal"]).enqueue(np.arange(40, dtype=np.uint64), new, idx, 0.0,
                                               np.full(40, eng.clock.take(), np.uint64))
    drain(w1)
    assert inst.ids.held[:, idx].tolist() == [0, 40]
    assert found(w0, idx, old, 10) == set()  # the copies left on slot 0 are not answers
    ids, dist = w1.held_search(idx, new, 1, 64)
    assert ids[:, 0].tolist() == list(range(40)) and np.allclose(dist[:, 0], 0, atol=1e-5)
    assert w0.shards.live(idx) == 0  # the search met them and marked them deleted
    w0.publish_changed()
    assert metric(inst, "index_deleted_vectors", memory_space=idx) == 40  # slot 0 keeps them until compacted
    assert metric(inst, "index_vectors", memory_space=idx) == 40


def test_an_older_operation_replayed_after_a_newer_one_is_dropped(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    idx = eng.spaces.register(space)
    ring = inst.ring(0, LANE_INDEX["normal"])
    v = vectors(2, 7)
    ring.enqueue(np.array([1], np.uint64), v[1:], idx, 0.0, np.array([200], np.uint64))
    ring.enqueue(np.array([1], np.uint64), v[:1], idx, 0.0, np.array([100], np.uint64))  # older, queued later
    drain(w0)
    ids, dist = w0.held_search(idx, v[1:], 1, 64)
    assert ids[0, 0] == 1 and dist[0, 0] < 1e-5  # the newer vector stands


def test_compaction_rebuilds_a_shard_and_gives_memory_back(inst, monkeypatch):
    monkeypatch.setattr(compaction, "CHECK_EVERY_S", 0.0)
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    vecs = vectors(2000, 8)
    observe_drained(eng, space, vecs, w0)
    idx = eng.spaces.lookup(space)
    before = w0.shards.shards[idx].index_file_size()
    eng.forget(space, np.arange(0, 1500), wait=False)
    drain(w0)
    assert w0.shards.count(idx) == 2000
    assert w0.compact()  # starts: 500 of 2000 live
    eng.observe(space, [1600, 5000], vectors(2, 9))  # changes while the copy runs
    eng.forget(space, [1700], wait=False)
    w0.compact()
    drain(w0)
    while w0.compactor.job is not None:
        w0.compact()
    # 1500..1999 less 1700, plus 5000; 1700 is in the new index, marked deleted,
    # only if the copy reached it before its forget
    assert w0.shards.live(idx) == 500 and w0.shards.count(idx) - 500 in (0, 1)
    assert w0.shards.shards[idx].index_file_size() < before / 2
    assert metric(inst, "compactions_total", memory_space=idx) == 1
    assert metric(inst, "compaction_reclaimed_bytes_total", memory_space=idx) > 0
    got = found(w0, idx, np.vstack([vecs, vectors(2, 9)]), 20)
    assert got == (set(range(1500, 2000)) - {1700}) | {5000}
    ids, dist = w0.held_search(idx, vectors(2, 9)[:1], 1, 64)
    assert ids[0, 0] == 1600 and dist[0, 0] < 1e-5  # replaced during the copy: the new vector


def test_tombstones_are_dropped_only_below_every_floor(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    eng.observe(space, np.arange(100), vectors(100, 10))
    drain(w0)
    eng.forget(space, np.arange(100), wait=False)
    drain(w0)
    idx = eng.spaces.lookup(space)
    now = [eng.clock.take() + 10**10]
    tombs = Tombstones(inst, lambda: now[0])
    assert tombs.count() == 100
    passes = -(-inst.ids.capacity // tombstones.CHUNK)  # ticks for one pass over the table
    # no slot has published its floor yet (recovering): every tombstone is held back
    assert inst.ids.floors.tolist() == [0, 0]
    assert sum(tombs.tick(1.0 + i) for i in range(passes)) == 0
    inst.ids.floors[:] = np.iinfo(np.uint64).max  # published: no log records
    # an older observe of one of them is still queued: nothing at or above its stamp goes
    inst.ring(1, LANE_INDEX["low"]).enqueue(np.array([7], np.uint64), vectors(1, 11), idx, 0.0,
                                            np.array([1], np.uint64))
    assert tombs.tick(10.0) == 0
    w1 = make_worker(inst, 1)
    drain(w1)
    assert inst.ids.holders(idx, np.array([7], np.uint64)).tolist() == [-1]  # the older observe lost
    inst.ids.floors[0] = 5  # a log still on disk holds stamp 5
    assert sum(tombs.tick(20.0 + i) for i in range(passes)) == 0
    inst.ids.floors[0] = np.iinfo(np.uint64).max
    assert sum(tombs.tick(100.0 + i) for i in range(passes)) == 100
    assert inst.ids.holders(idx, np.arange(100, dtype=np.uint64)).tolist() == [ABSENT] * 100
    assert inst.ids.used == 0


def test_fresh_recall_sees_queued_forgets_and_replacements(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    idx = eng.spaces.register(space)
    v = vectors(4, 12)
    eng.observe(space, np.arange(3), v[:3])
    # nothing applied yet: the scan alone answers
    eng.forget(space, [0], wait=False)
    eng.observe(space, [1], v[3:4])
    cand_ids, cand_dist, masked, ok = eng._scan_rings(idx, v, 4)
    assert ok and set(masked.tolist()) == {0, 1, 2}
    assert set(cand_ids.ravel().tolist()) == {1, 2}
    res = eng.recall(space, v[3:4], k=3, fresh=True)
    assert res.ids[0, 0] == 1 and res.distances[0, 0] < 1e-5 and 0 not in res.ids


def test_a_full_identity_table_refuses_new_observations_with_a_reason(inst):
    eng = Engine(inst)
    space = space_homed_at(0)
    table = inst.ids
    rings = sum(inst.capacity_by_lane())
    table._hdr[3] = np.uint64(table.capacity * 3 // 4 - rings - 5)  # as if that many keys were tracked
    try:
        ack = eng.observe(space, np.arange(10), vectors(10, 13))
        assert ack.accepted == 0 and ack.rejected == {"over_capacity": 10}
        assert "--max-ids" in ack.message
        assert eng.observe(space, np.arange(5), vectors(5, 13)).accepted == 5  # what fits still goes in
        assert eng.forget(space, np.arange(10), wait=False).accepted == 10  # forgets have more room
        idx = eng.spaces.lookup(space)
        assert metric(inst, "observations_rejected_total", memory_space=idx, reason="over_capacity") == 10
    finally:
        table._hdr[3] = np.uint64(0)


def test_a_compaction_finishes_while_the_space_keeps_taking_inserts(inst, monkeypatch):
    """Inserts into the compacting space go to the new index only (their old
    copies are marked dead), so the copy has a fixed amount of work and the
    swap leaves nothing behind."""
    monkeypatch.setattr(compaction, "CHECK_EVERY_S", 0.0)
    eng = Engine(inst)
    space = space_homed_at(0)
    w0 = make_worker(inst, 0)
    vecs = vectors(3000, 14)
    observe_drained(eng, space, vecs, w0)
    idx = eng.spaces.lookup(space)
    eng.forget(space, np.arange(0, 1000), wait=False)
    drain(w0)
    assert w0.compact() and w0.compactor.job is not None
    added = 0
    mid_checked = False
    steps = 0
    while w0.compactor.job is not None:
        new = vectors(100, 100 + steps)
        eng.observe(space, np.arange(10_000 + added, 10_000 + added + 100), new)
        added += 100
        w0.step()
        steps += 1
        assert steps < 2000, "the compaction never finished"
        if steps == 2 and w0.compactor.job is not None:
            drain(w0)
            # mid-rebuild: a vector inserted since (new index only) and one not copied yet (old only)
            ids, dist = w0.held_search(idx, np.vstack([new[:1], vecs[2999:3000]]), 1, 64)
            assert ids[:, 0].tolist() == [10_000 + added - 100, 2999] and np.allclose(dist[:, 0], 0, atol=1e-5)
            mid_checked = True
    drain(w0)
    assert mid_checked
    assert w0.shards.live(idx) == 2000 + added == inst.ids.held[0, idx]
    assert w0.shards.count(idx) == w0.shards.live(idx)  # nothing dead carried over
    ids, dist = w0.held_search(idx, vectors(100, 100)[:5], 1, 64)
    assert ids[:, 0].tolist() == list(range(10_000, 10_005)) and np.allclose(dist[:, 0], 0, atol=1e-5)
