"""Flapping: a worker slot killed again and again is parked, and its queue drained by the others."""

from __future__ import annotations

import os
import signal

import numpy as np

from engine.producer.routing import home_slot
from tests.harness import wait_for

DIM = 16


def total_vectors(ep, space=None) -> int:
    st = ep.status()
    if space is not None:
        return st["spaces"].get(space, {}).get("vectors", 0)
    return sum(s["vectors"] for s in st["spaces"].values())


def test_flapping_slot_is_parked_and_its_queue_drained(engine_factory):
    ep = engine_factory(flap_restarts=3, flap_window=60, park_seconds=300, steal_threshold=100000)
    eng = ep.engine()
    space = "parked"
    slot = home_slot(space, 2)
    for crash in range(3):
        pid = wait_for(lambda: next((w["pid"] for w in ep.status()["workers"]
                                     if w["slot"] == slot and w["state"] == "running"), None),
                       30, message=f"slot running before crash {crash}")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: ep.status()["workers"][slot]["pid"] != pid, 30, message="crash noticed")
    wait_for(lambda: ep.status()["workers"][slot]["state"] == "parked", 30, message="parked")
    rng = np.random.default_rng(8)
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    assert eng.observe(space, np.arange(300), vecs).accepted == 300
    wait_for(lambda: total_vectors(ep, space) == 300, 30, message="parked slot's queue drained")
    counts = eng.inst.shard_counts[:, eng.spaces.lookup(space)]
    assert counts[slot] == 0 and counts[1 - slot] == 300
    assert "parked" in ep.log()
