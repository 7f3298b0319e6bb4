"""Kill storm: a random worker killed every second while 30,000 observations stream in."""

from __future__ import annotations

import os
import signal

import numpy as np

from tests.harness import observe_all, total, wait_for

DIM = 16


def test_chaos_random_worker_killed_every_second_loses_and_duplicates_nothing(engine_factory):
    """30,000 observations over 4 spaces while a random worker is killed every
    second: afterwards each space holds exactly the accepted ids, each its own top-1."""
    import random
    import threading
    import time
    ep = engine_factory(fsync="interval", flap_restarts=1000, steal_threshold=200)
    eng = ep.engine()
    spaces = ["chaos-0", "chaos-1", "chaos-2", "chaos-3"]
    rng = np.random.default_rng(77)
    vecs = rng.standard_normal((30000, DIM)).astype(np.float32)
    stop = threading.Event()
    kills = []

    def killer():
        r = random.Random(7)
        while not stop.wait(1.0):
            alive = [w["pid"] for w in ep.status()["workers"] if w["state"] == "running" and w["pid"]]
            if alive:
                pid = r.choice(alive)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        for k in range(0, 30000, 250):  # about 3,000/s: the stream spans ~10 kills
            observe_all(eng, spaces[(k // 250) % 4], np.arange(k, k + 250), vecs[k:k + 250], timeout=120)
            time.sleep(max(0.0, started + (k + 250) / 3000 - time.monotonic()))
    finally:
        stop.set()
        t.join(10)
    assert len(kills) >= 8
    wait_for(lambda: all(w["state"] == "running" for w in ep.status()["workers"]), 60, message="all running")
    wait_for(lambda: total(ep) == 30000, 120, message="every accepted observation inserted")
    st = ep.status()
    for i, space in enumerate(spaces):
        mine = np.concatenate([np.arange(k, k + 250) for k in range(i * 250, 30000, 1000)])
        assert st["spaces"][space]["vectors"] == len(mine) == 7500
        res = eng.recall(space, vecs[mine], k=1)
        assert res.complete
        assert (res.ids[:, 0] == mine).mean() >= 0.99  # each its own top-1 (HNSW is approximate)
        assert np.isin(res.ids[:, 0], mine).all()  # nothing from another space
