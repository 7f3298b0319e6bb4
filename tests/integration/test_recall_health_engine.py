"""Recall health on a real engine: probes, breakers, readiness, the auto-tuner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

from tests.harness import observe_all, wait_for
from engine.control import recallstate
from engine.control.records import CLOSED, OPEN
from engine.producer.routing import home_slot

DIM = 16


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def space_homed_on(slot: int, slots: int = 2) -> str:
    return next(f"space-{i}" for i in range(1000) if home_slot(f"space-{i}", slots) == slot)


def test_stopped_worker_opens_its_breaker_and_fails_readiness_then_recovers(engine_factory):
    ep = engine_factory(probe_interval="0.2", breaker_cooldown="2", grpc_addr="off")
    eng = ep.engine()
    port = ep.exporter_port()
    rng = np.random.default_rng(5)
    for slot in (0, 1):
        sp = space_homed_on(slot)
        observe_all(eng, sp, np.arange(200, dtype=np.uint64), rng.standard_normal((200, DIM)).astype(np.float32))
    wait_for(lambda: (eng.inst.shard_counts.sum(axis=1) > 0).all(), 30, message="both shards hold data")
    wait_for(lambda: get(port, "/health/recall")[0] == 200, 30, message="probes pass")
    pid = ep.status()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: get(port, "/health/ready")[0] == 503, 30, message="not ready")
        assert time.monotonic() - stopped < 30
        code, body = get(port, "/health/recall")
        assert code == 503 and body["slots"][1]["state"] in ("degraded", "unhealthy")
        assert body["slots"][0]["state"] == "healthy"
        wait_for(lambda: int(recallstate.breaker(eng.inst, 1).state) == OPEN, 60, message="breaker open")
        assert get(port, "/health/recall")[1]["slots"][1]["breaker"] == "open"
        t0 = time.monotonic()
        res = eng.recall(space_homed_on(1), rng.standard_normal(DIM).astype(np.float32), k=5, timeout=5.0)
        assert time.monotonic() - t0 < 1.0 and not res.complete and 1 in res.skipped
        health = get(port, "/api/v1/system/health")[1]
        assert health["components"]["recall"]["status"] in ("degraded", "down")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: int(recallstate.breaker(eng.inst, 1).state) == CLOSED, 60, message="breaker closed")
    wait_for(lambda: get(port, "/health/ready")[0] == 200, 60, message="ready again")
    assert get(port, "/health/recall")[0] == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for moved in ('from="closed",to="open"', 'from="open",to="half_open"', 'from="half_open",to="closed"'):
        line = next(x for x in metrics.splitlines()
                    if x.startswith("engram_streaming_recall_breaker_transitions_total") and moved in x
                    and 'worker_id="1"' in x)
        assert float(line.rsplit(" ", 1)[1]) >= 1, line
    assert 'engram_streaming_recall_probe_failures_total{reason="timeout",worker_id="1"}' in metrics
    res = eng.recall(space_homed_on(1), rng.standard_normal(DIM).astype(np.float32), k=5)
    assert res.complete and res.skipped == ()


def test_breaker_command_forces_a_slot_open_for_every_producer(engine_factory):
    ep = engine_factory(grpc_addr="off", probe_interval="60")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-m", "engine", "breaker", "1", "open", "--name", ep.name],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "override open" in run.stdout
    eng = ep.engine()
    assert eng.breakers.admit([0, 1]) == ([0], [1])
    subprocess.run([sys.executable, "-m", "engine", "breaker", "1", "auto", "--name", ep.name], check=True,
                   env=env, timeout=60, capture_output=True)
    assert eng.breakers.admit([0, 1]) == ([0, 1], [])


def test_autotune_lowers_the_batch_budget_under_light_bursty_load(engine_factory):
    ep = engine_factory(autotune_interval="3", grpc_addr="off", batch_max="1000", batch_min="10",
                        ef_construction="400")
    eng = ep.engine()
    port = ep.exporter_port()
    rng = np.random.default_rng(9)
    n = 0
    sent_at = drained_at = None

    def burst():
        # Light whatever the machine's speed: the next burst only once the
        # last one is inserted and the workers have then been idle twice as
        # long as it took, so utilization stays near a third.
        nonlocal n, sent_at, drained_at
        if recallstate.tuned(eng.inst).generation > 0:
            return True
        now = time.monotonic()
        if sent_at is not None and drained_at is None:
            if sum(eng.inst.queued_by_lane()) or int(eng.inst.shard_counts.sum()) < n:
                return False
            drained_at = now
        if sent_at is not None and now - drained_at < 2 * (drained_at - sent_at):
            return False
        sent_at, drained_at = now, None
        observe_all(eng, "bursty", np.arange(n, n + 2000, dtype=np.uint64),
                    rng.standard_normal((2000, DIM)).astype(np.float32))
        n += 2000
        return False

    wait_for(burst, 120, interval=0.05, message="an auto-tuner change")
    cfg = get(port, "/api/v1/system/config")[1]
    change = next(h for h in cfg["history"] if h["setting"] == "batch_budget_ms")
    assert change["new"] < change["old"] == 50.0 and change["evidence"]
    assert cfg["settings"]["batch_budget_ms"]["value"] == change["new"] or len(cfg["history"]) > 1
    # The workers follow: the live record they read before each batch holds the new budget.
    assert float(recallstate.tuned(eng.inst).batch_budget_ms) < 50.0
    st = subprocess.run([sys.executable, "-m", "engine", "status", "--name", ep.name], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=60)
    assert "batch_budget_ms 50.0 ->" in st.stdout, st.stdout


def test_grpc_recall_names_the_slot_whose_breaker_is_open(engine_factory):
    from engine.client import Client
    from engine.control.records import OVERRIDE_AUTO, OVERRIDE_OPEN
    from tests.gateway_helpers import target

    # probe_interval 60: no probe runs during the test, only the override moves the breaker
    ep = engine_factory(probe_interval="60")
    eng = ep.engine()
    rng = np.random.default_rng(11)
    space = "skipped-over-grpc"
    observe_all(eng, space, np.arange(300, dtype=np.uint64), rng.standard_normal((300, DIM)).astype(np.float32))
    wait_for(lambda: eng.spaces.lookup(space) is not None, 30, message="space registered")
    idx = eng.spaces.lookup(space)
    wait_for(lambda: int(eng.inst.shard_counts[:, idx].sum()) == 300, 30, message="all inserted")
    holders = [s for s in range(eng.inst.slots) if eng.inst.shard_counts[s, idx] > 0]
    query = rng.standard_normal((2, DIM)).astype(np.float32)
    with Client(target(ep)) as c:
        res = c.recall(space, query, k=5)
        assert res.complete and res.skipped == () and res.ids.shape == (2, 5)
        forced = holders[-1]
        eng.breakers.override(forced, OVERRIDE_OPEN)
        try:
            res = c.recall(space, query, k=5)
            assert not res.complete and res.skipped == (forced,)
        finally:
            eng.breakers.override(forced, OVERRIDE_AUTO)
        res = c.recall(space, query, k=5)
        assert res.complete and res.skipped == ()
