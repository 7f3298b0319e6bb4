"""A producer stopped (SIGSTOP) while it holds locks freezes nothing else.

The kernel releases a byte lock when its holder dies, not when it stops. A
helper process takes the control lock and one ring's lock, as a producer
inside ``observe`` does, and stops itself. Every other path must still end
within its deadline: other producers are answered (``over_capacity`` or
spilled to another ring), workers keep beating and are not killed as hung,
and a fresh recall returns, marked incomplete.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

from engine.control.layouts import LANE_INDEX, ring_id
from engine.producer.routing import home_slot
from tests.harness import child_env, wait_for

HOLDER = """
import os, signal, sys
from engine.control.instance import Instance
from engine.control.layouts import LOCK_CONTROL, LOCK_RING_BASE
inst = Instance.attach(sys.argv[1], "producer")
inst.locks.acquire(LOCK_CONTROL)
inst.locks.acquire(LOCK_RING_BASE + int(sys.argv[2]))
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def within(seconds: float, fn):
    """Run ``fn`` on a thread; its result, or AssertionError if it is still running after ``seconds``."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    started = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds}s"
    return out["r"], time.monotonic() - started


def test_a_stopped_producer_holding_locks_blocks_no_one(engine_factory):
    ep = engine_factory(worker_timeout="4")
    eng = ep.engine()
    space = next(f"frozen-{i}" for i in range(100) if home_slot(f"frozen-{i}", 2) == 0)
    vecs = np.random.default_rng(2).standard_normal((400, 16)).astype(np.float32)
    assert eng.observe(space, np.arange(200), vecs[:200]).accepted == 200
    wait_for(lambda: ep.status()["spaces"][space]["vectors"] == 200, 30, message="inserted")
    ring = ring_id(0, LANE_INDEX["normal"])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ep.name, str(ring)], stdout=subprocess.PIPE,
                              text=True, env=child_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        wait_for(lambda: open(f"/proc/{holder.pid}/stat").read().split()[2] == "T", 10, message="holder stopped")
        # A new space needs the control lock: refused within its deadline, saying why.
        ack, took = within(5, lambda: eng.observe("frozen-new-space", np.arange(10), vecs[:10]))
        assert ack.accepted == 0 and ack.rejected == {"over_capacity": 10} and "busy" in ack.message
        # A known space whose home ring is locked spills to the other slot's ring.
        ack, took = within(5, lambda: eng.observe(space, np.arange(200, 400), vecs[200:]))
        assert ack.accepted == 200, ack
        res, took = within(10, lambda: eng.recall(space, vecs[:5], k=1, fresh=True, timeout=2.0))
        assert not res.complete  # the locked ring could not be scanned
        # Longer than --worker-timeout 4: the workers keep beating, nobody is killed as hung.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            st = ep.status()
            assert [w["restarts"] for w in st["workers"]] == [0, 0], st["workers"]
            assert all(w["state"] == "running" for w in st["workers"]), st["workers"]
            time.sleep(0.25)
        wait_for(lambda: ep.status()["spaces"][space]["vectors"] == 400, 30, message="the spilled 200 inserted")
    finally:
        holder.kill()  # a dead holder's locks are released by the kernel
        holder.wait(10)
    ack = eng.observe("frozen-new-space", np.arange(10), vecs[:10])
    assert ack.accepted == 10
    res = eng.recall(space, vecs[:5], k=1, fresh=True)
    assert res.complete and res.ids[:, 0].tolist() == list(range(5))
