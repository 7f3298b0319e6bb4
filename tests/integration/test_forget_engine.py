"""Forget and upsert on a real engine: 2 worker processes, stealing, restarts, kill -9."""

from __future__ import annotations

import os
import signal

import numpy as np
import psutil

from metrics import readout
from tests.harness import forget_all, observe_all, wait_for

DIM = 16
# Stealing on: a worker steals from the other's ring past 50 queued records.
FLAGS = {"steal_threshold": "50", "batch_max": "100"}


def metric(eng, name, **labels) -> float:
    """A counter or gauge of the engine's metric array, summed over every row."""
    array = eng.inst.metrics
    p = array.cellmap.placement(name)
    block = readout.block(array, array.snapshot(), name)[..., 0]
    where = tuple(array.cellmap.label_index(p, d, labels[d.label]) if d.label in labels else slice(None)
                  for d in p.dims)
    return float(block[where].sum())


def settled(ep) -> bool:
    """Every ring empty and committed."""
    return all(r.queued() == 0 for r in ep.engine().inst.rings)


def recalled(eng, space, queries, k=100, fresh=False) -> set[int]:
    out: set[int] = set()
    for lo in range(0, len(queries), 256):
        res = eng.recall(space, queries[lo:lo + 256], k=k, fresh=fresh, timeout=30)
        assert res.complete
        out.update(res.ids.ravel().tolist())
    return out


def check_forgotten(ep, data, gone):
    """No recall (k=100, fresh and not) returns a forgotten id; counts exact."""
    eng = ep.engine()
    status = ep.status()["spaces"]
    for space, (ids, vecs) in data.items():
        assert status[space]["vectors"] == len(ids) - len(gone[space]), (space, status[space])
        for fresh in (False, True):
            got = recalled(eng, space, vecs, fresh=fresh)
            assert not got & gone[space], (space, fresh, sorted(got & gone[space])[:10])
            assert len(got) >= 0.95 * (len(ids) - len(gone[space]))  # the live ones are still there


def test_forget_half_over_three_spaces_with_stealing_then_restart(engine_factory):
    ep = engine_factory(**FLAGS)
    eng = ep.engine()
    rng = np.random.default_rng(1)
    sizes = {"f-alpha": 4000, "f-beta": 3500, "f-gamma": 2500}
    data, gone = {}, {}
    for space, n in sizes.items():
        ids = np.arange(n, dtype=np.uint64) + 1_000_000
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        for lo in range(0, n, 500):
            observe_all(eng, space, ids[lo:lo + 500], vecs[lo:lo + 500])
        data[space] = (ids, vecs)
    wait_for(lambda: settled(ep), 60, message="queues drained")
    assert metric(eng, "work_stolen_total") > 0, "no stealing happened: the test would not cover it"
    forgotten = 0
    for space, (ids, vecs) in data.items():
        pick = rng.choice(len(ids), size=len(ids) // 2, replace=False)
        gone[space] = set(ids[pick].tolist())
        res = eng.forget(space, ids[pick], timeout=30)
        assert res.applied and res.accepted == len(pick) and res.not_found == 0, res
        forgotten += len(pick)
    assert forgotten == 5000
    check_forgotten(ep, data, gone)
    assert metric(eng, "forgets_total") == 5000
    ep.disconnect()
    assert ep.terminate(60) == 0
    again = ep.successor()
    try:
        again.start()
        wait_for(lambda: again.status()["state"] == "running", 60)
        check_forgotten(again, data, gone)
    finally:
        again.terminate(60)
        again.cleanup()


def test_upsert_replaces_vectors_also_across_workers(engine_factory):
    ep = engine_factory(**FLAGS)
    eng = ep.engine()
    rng = np.random.default_rng(2)
    ids = np.arange(2000, dtype=np.uint64)
    old = rng.standard_normal((2000, DIM)).astype(np.float32)
    new = rng.standard_normal((2000, DIM)).astype(np.float32)
    for lo in range(0, 2000, 500):
        observe_all(eng, "u-space", ids[lo:lo + 500], old[lo:lo + 500])
    wait_for(lambda: settled(ep), 60, message="queues drained")
    idx = eng.spaces.lookup("u-space")
    before = eng.inst.ids.holders(idx, ids)
    for lo in range(0, 2000, 250):
        observe_all(eng, "u-space", ids[lo:lo + 250], new[lo:lo + 250])
    wait_for(lambda: settled(ep), 60, message="queues drained")
    after = eng.inst.ids.holders(idx, ids)
    assert (before >= 0).all() and (after >= 0).all()
    assert (before != after).any(), "no replacement landed on the other worker"
    st = ep.status()["spaces"]["u-space"]
    assert st["vectors"] == 2000  # one vector per id
    for fresh in (False, True):
        res = eng.recall("u-space", new, k=1, fresh=fresh, timeout=30)
        assert (res.ids[:, 0] == ids).all() and np.allclose(res.distances[:, 0], 0, atol=1e-4)
    # asked with the old vectors, an id comes back only as its new vector
    res = eng.recall("u-space", old, k=10, timeout=30)
    for row, (rid, rdist) in enumerate(zip(res.ids, res.distances)):
        hit = rid == ids[row]
        if hit.any():
            expect = 1 - float(old[row] @ new[row]) / (np.linalg.norm(old[row]) * np.linalg.norm(new[row]))
            assert abs(float(rdist[hit][0]) - expect) < 1e-3


def test_observe_forget_observe_end_in_acknowledged_order_through_a_worker_kill(engine_factory):
    ep = engine_factory(**FLAGS)
    eng = ep.engine()
    rng = np.random.default_rng(3)
    n = 3000
    ids = np.arange(n, dtype=np.uint64)
    last = {}  # id -> the vector of its last acknowledged observe, or None once forgotten
    victim = ep.status()["workers"][0]["pid"]
    for rnd in range(6):
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        for lo in range(0, n, 500):
            observe_all(eng, "o-space", ids[lo:lo + 500], vecs[lo:lo + 500], priority="low")
        for i in range(n):
            last[i] = vecs[i]
        pick = rng.choice(n, size=n // 3, replace=False)
        forget_all(eng, "o-space", ids[pick])
        for i in pick.tolist():
            last[i] = None
        if rnd == 2:
            os.kill(victim, signal.SIGKILL)  # while the low lane still holds older observes
    wait_for(lambda: settled(ep) and ep.status()["workers"][0]["pid"] not in (0, victim), 90,
             message="queues drained and the worker replaced")
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    live = [i for i in range(n) if last[i] is not None]
    dead = {i for i in range(n) if last[i] is None}
    assert ep.status()["spaces"]["o-space"]["vectors"] == len(live)
    got = recalled(eng, "o-space", np.stack([last[i] for i in live]), k=100)
    assert not got & dead
    res = eng.recall("o-space", np.stack([last[i] for i in live]), k=1, timeout=30)
    assert (res.ids[:, 0] == np.array(live, np.uint64)).mean() > 0.99
    assert np.allclose(res.distances[:, 0][res.ids[:, 0] == np.array(live, np.uint64)], 0, atol=1e-4)
