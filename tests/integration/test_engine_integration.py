"""Real engine, real worker processes (2 workers), real shared memory; the CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import InvalidInput
from engine.control.layouts import LANE_INDEX
from engine.producer.routing import home_slot
from metrics import readout
from shm.segment import instance_objects
from tests.harness import observe_all, wait_for

DIM = 16


def total_vectors(ep, space=None) -> int:
    st = ep.status()
    if space is not None:
        return st["spaces"].get(space, {}).get("vectors", 0)
    return sum(s["vectors"] for s in st["spaces"].values())


def test_ten_thousand_over_three_spaces_and_priorities(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    rng = np.random.default_rng(1)
    spaces = ["alpha", "beta", "gamma"]
    sent = {s: ([], []) for s in spaces}
    next_id = 0
    for i in range(100):  # 100 batches x 100 = 10,000
        space, prio = spaces[i % 3], ("high", "normal", "low")[(i // 3) % 3]
        ids = np.arange(next_id, next_id + 100, dtype=np.uint64)
        vecs = rng.standard_normal((100, DIM)).astype(np.float32)
        next_id += 100
        observe_all(eng, space, ids, vecs, priority=prio)
        sent[space][0].append(ids)
        sent[space][1].append(vecs)
    wait_for(lambda: total_vectors(ep) == 10_000, 60, message="10,000 inserted")
    for space in spaces:
        ids = np.concatenate(sent[space][0])
        vecs = np.concatenate(sent[space][1])
        res = eng.recall(space, vecs, k=5)
        assert res.complete
        assert res.ids.shape == (len(ids), 5)
        top1 = (res.ids[:, 0] == ids).mean()
        assert top1 >= 0.99, f"{space}: top-1 self-recall {top1:.3f}"
        # Isolation: every id returned belongs to this space.
        assert np.isin(res.ids, ids).all(), f"{space}: foreign ids in recall"
        assert ep.status()["spaces"][space]["vectors"] == len(ids)


def test_one_space_flooding_one_worker_is_stolen_from(engine_factory):
    ep = engine_factory(steal_threshold=300, capacity_normal=40000, batch_max=200)
    eng = ep.engine()
    space = "flood"
    home = home_slot(space, 2)
    rng = np.random.default_rng(2)
    n = 0
    for _ in range(60):  # 12,000 observations, well under the home ring's 20,000
        ack = eng.observe(space, np.arange(n, n + 200, dtype=np.uint64),
                          rng.standard_normal((200, DIM)).astype(np.float32))
        assert ack.accepted == 200
        n += 200
    wait_for(lambda: total_vectors(ep, space) == n, 90, message="flood inserted")
    counts = eng.inst.shard_counts[:, eng.spaces.lookup(space)]
    assert counts[home] > 0 and counts[1 - home] > 0, f"both workers must insert: {counts}"
    # Every enqueued record went into the home ring (no spill), so the other
    # worker's share can only have come from stealing.
    lane = LANE_INDEX["normal"]
    assert eng.inst.ring(1 - home, lane).head == 0
    assert eng.inst.ring(home, lane).head == n
    stolen = readout.block(eng.inst.metrics, eng.inst.metrics.snapshot(), "work_stolen_total")
    assert stolen[1 - home, 0] > 0 and stolen[home, 0] == 0


BAD_INPUTS = [
    ("wrong dimension", lambda: ("ok-space", [1], np.ones((1, DIM + 1), np.float32))),
    ("nan", lambda: ("ok-space", [1], np.full((1, DIM), np.nan, np.float32))),
    ("inf", lambda: ("ok-space", [1], np.full((1, DIM), np.inf, np.float32))),
    ("int dtype", lambda: ("ok-space", [1], np.ones((1, DIM), np.int32))),
    ("string dtype", lambda: ("ok-space", [1], np.array([["a"] * DIM]))),
    ("3-d shape", lambda: ("ok-space", [1], np.ones((1, 1, DIM), np.float32))),
    ("count mismatch", lambda: ("ok-space", [1, 2], np.ones((3, DIM), np.float32))),
    ("bad space name", lambda: ("Bad Space!", [1], np.ones((1, DIM), np.float32))),
    ("short space name", lambda: ("ab", [1], np.ones((1, DIM), np.float32))),
    ("negative id", lambda: ("ok-space", [-1], np.ones((1, DIM), np.float32))),
    ("id above 2**64", lambda: ("ok-space", [2 ** 64], np.ones((1, DIM), np.float32))),
    ("float ids", lambda: ("ok-space", [1.5], np.ones((1, DIM), np.float32))),
    ("empty batch", lambda: ("ok-space", [], np.ones((0, DIM), np.float32))),
    ("oversized batch", lambda: ("ok-space", np.arange(501), np.ones((501, DIM), np.float32))),
    ("zero vector under cosine", lambda: ("ok-space", [1], np.zeros((1, DIM), np.float32))),
]


def test_bad_inputs_are_refused_and_engine_keeps_serving(engine_factory):
    ep = engine_factory(max_batch_size=500)
    eng = ep.engine()
    for label, make in BAD_INPUTS:
        space, ids, vecs = make()
        with pytest.raises(InvalidInput) as info:
            eng.observe(space, ids, vecs)
        assert str(info.value), label
    with pytest.raises(InvalidInput, match="priority"):
        eng.observe("ok-space", [1], np.ones((1, DIM), np.float32), priority="urgent")
    with pytest.raises(InvalidInput, match="k="):
        eng.recall("ok-space", np.ones(DIM, np.float32), k=0)
    with pytest.raises(InvalidInput, match="query"):
        eng.recall("ok-space", np.ones(DIM + 2, np.float32))
    with pytest.raises(InvalidInput, match="NaN"):
        eng.recall("ok-space", np.full(DIM, np.nan, np.float32))
    # Nothing bad reached a worker; the engine still ingests and answers.
    assert ep.status()["spaces"] == {}
    vec = np.random.default_rng(3).standard_normal((1, DIM)).astype(np.float32)
    assert eng.observe("ok-space", [7], vec).accepted == 1
    wait_for(lambda: total_vectors(ep, "ok-space") == 1, 30, message="good observation inserted")
    res = eng.recall("ok-space", vec[0], k=3)
    assert res.ids.tolist() == [[7]] and res.complete
    assert all(w["state"] == "running" and w["restarts"] == 0 for w in ep.status()["workers"])


def test_kill_9_worker_replacement_is_pinned_and_reprocesses_its_claims(engine_factory):
    ep = engine_factory(steal_threshold=100000)
    eng = ep.engine()
    space = "claims"
    slot = home_slot(space, 2)
    before = ep.status()["workers"][slot]
    pid, cpus = before["pid"], before["cpus"]
    os.kill(pid, signal.SIGSTOP)  # the worker can take nothing from here on
    try:
        rng = np.random.default_rng(4)
        ids = np.arange(1000, 1600, dtype=np.uint64)
        vecs = rng.standard_normal((600, DIM)).astype(np.float32)
        assert eng.observe(space, ids, vecs).accepted == 600
        # Claim everything in the worker's name, as if it had taken the batch
        # and was inserting it when it died.
        ring = eng.inst.ring(slot, LANE_INDEX["normal"])
        claims = ring.claim_many(600, 200, slot)
        assert sum(c.count for c in claims) == 600 and ring.depth() == 0
    finally:
        os.kill(pid, signal.SIGKILL)
    after = wait_for(lambda: next((w for w in ep.status()["workers"]
                                   if w["slot"] == slot and w["pid"] not in (None, pid)
                                   and w["state"] == "running"), None), 30, message="replacement")
    assert after["restarts"] == 1
    assert after["cpus"] == cpus
    assert os.sched_getaffinity(after["pid"]) == set(cpus)
    wait_for(lambda: total_vectors(ep, space) == 600, 30, message="claims reprocessed")
    assert ring.tail == ring.head == 600
    assert ring.open_claimers() == set()
    res = eng.recall(space, vecs[:50], k=1)
    assert (res.ids[:, 0] == ids[:50]).mean() >= 0.98


def test_sigterm_with_full_queue_drains_and_exits_zero(engine_factory):
    ep = engine_factory(capacity_normal=4000, capacity_high=200, capacity_low=200)
    eng = ep.engine()
    pids = [w["pid"] for w in ep.status()["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    rng = np.random.default_rng(5)
    accepted, n = 0, 0
    try:
        for _ in range(50):
            ack = eng.observe("drain-me", np.arange(n, n + 100, dtype=np.uint64),
                              rng.standard_normal((100, DIM)).astype(np.float32), priority="high")
            n += 100
            accepted += ack.accepted
            if ack.rejected:
                assert ack.rejected == {"over_capacity": 100 - ack.accepted}
                break
        assert accepted == 200, "high lane holds 200: the queue is full"
        for prio in ("normal", "low"):
            while True:
                ack = eng.observe("drain-me", np.arange(n, n + 100, dtype=np.uint64),
                                  rng.standard_normal((100, DIM)).astype(np.float32), priority=prio)
                n += 100
                accepted += ack.accepted
                if ack.accepted < 100:
                    break
        assert ep.status()["backpressure"] in ("critical", "overloaded")
    finally:
        ep.proc.send_signal(signal.SIGTERM)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert ep.proc.wait(60) == 0, ep.log()
    counts = eng.inst.shard_counts  # still mapped here after the unlink
    assert int(counts.sum()) == accepted
    assert not instance_objects(ep.name)
    assert "queues drained" in ep.log()


def test_recall_fresh_sees_queued_observations(engine_factory):
    ep = engine_factory(steal_threshold=100000)
    eng = ep.engine()
    space = "fresh-space"
    rng = np.random.default_rng(6)
    base = rng.standard_normal((50, DIM)).astype(np.float32)
    assert eng.observe(space, np.arange(50), base).accepted == 50
    wait_for(lambda: total_vectors(ep, space) == 50, 30, message="base inserted")
    pids = [w["pid"] for w in ep.status()["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        queued = rng.standard_normal((5, DIM)).astype(np.float32)
        assert eng.observe(space, np.arange(900, 905), queued).accepted == 5
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    # Workers may insert the 5 at any moment now; fresh must find them either way.
    res = eng.recall(space, queued, k=1, fresh=True)
    assert res.ids[:, 0].tolist() == list(range(900, 905))
    assert np.allclose(res.distances[:, 0], 0.0, atol=1e-5)


def test_fresh_scan_while_workers_are_stopped(engine_factory):
    ep = engine_factory(steal_threshold=100000)
    eng = ep.engine()
    rng = np.random.default_rng(7)
    pids = [w["pid"] for w in ep.status()["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        vecs = rng.standard_normal((20, DIM)).astype(np.float32)
        assert eng.observe("held", np.arange(20), vecs).accepted == 20
        res = eng.recall("held", vecs, k=1, fresh=True, timeout=1.0)
        assert res.ids[:, 0].tolist() == list(range(20))
        plain = eng.recall("held", vecs, k=1, timeout=1.0)
        assert plain.ids.shape == (20, 0)  # nothing inserted yet, and fresh was off
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_status_json_shape(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    eng.observe("shape-space", [1, 2], np.ones((2, DIM), np.float32))
    wait_for(lambda: total_vectors(ep, "shape-space") == 2, 30, message="inserted")
    out = subprocess.run([sys.executable, "-m", "engine", "status", "--name", ep.name, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["name"] == ep.name and st["pid"] == ep.proc.pid
    assert [w["slot"] for w in st["workers"]] == [0, 1]
    for w in st["workers"]:
        assert set(w) >= {"slot", "pid", "cpus", "state", "restarts"}
        assert w["state"] == "running" and len(w["cpus"]) == 1
    assert set(st["queues"]) == {"high", "normal", "low"}
    assert st["queues"]["normal"] == {"depth": 0, "capacity": 20000}
    assert st["backpressure"] == "normal"
    assert st["spaces"]["shape-space"]["vectors"] == 2
    table = subprocess.run([sys.executable, "-m", "engine", "status", "--name", ep.name],
                           capture_output=True, text=True, timeout=60)
    assert "shape-space" in table.stdout and "running" in table.stdout


def test_second_instance_same_name_is_refused(engine_factory, tmp_path):
    ep = engine_factory()
    out = subprocess.run([sys.executable, "-m", "engine", "run", "--name", ep.name,
                          "--data-dir", str(tmp_path / "other"), "--workers", "1", "--dim", "8"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert "already running" in out.stderr and str(ep.proc.pid) in out.stderr
    same_dir = subprocess.run([sys.executable, "-m", "engine", "run", "--name", "other-name",
                               "--data-dir", ep.data_dir, "--workers", "1", "--dim", "8"],
                              capture_output=True, text=True, timeout=60)
    assert same_dir.returncode == 3 and "in use" in same_dir.stderr
    assert not instance_objects("other-name")
    assert ep.status()["state"] == "running"  # the first one is untouched


def test_invalid_flag_value_fails_fast_naming_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine", "run", "--dim", "-3",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--dim='-3'" in out.stderr
    env = dict(os.environ, ENGRAM_METRIC="hamming")
    out = subprocess.run([sys.executable, "-m", "engine", "run", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "--metric='hamming'" in out.stderr and "ENGRAM_METRIC" in out.stderr


def test_console_script_and_module_are_the_same(tmp_path):
    a = subprocess.run(["engram-stream", "--help"], capture_output=True, text=True, timeout=60)
    b = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, timeout=60)
    assert a.returncode == b.returncode == 0
    for cmd in ("run", "status", "load", "recall", "stop"):
        assert cmd in a.stdout
    assert a.stdout.replace("engram-stream", "") == b.stdout.replace("engram-stream", "")


def test_stop_command_drains_and_reports_how_the_run_ended(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    eng.observe("stop-me", np.arange(100), np.ones((100, DIM), np.float32))
    out = subprocess.run([sys.executable, "-m", "engine", "stop", "--name", ep.name],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stopped: queues drained (exit code 0)" in out.stdout
    assert ep.proc.wait(30) == 0
    assert int(eng.inst.shard_counts.sum()) == 100
    record = json.load(open(os.path.join(ep.data_dir, "last-exit.json")))
    assert record == {**record, "exit_code": 0, "pid": ep.proc.pid}


def test_shared_memory_shortage_is_refused_before_anything_is_created(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine", "run", "--name", "too-big", "--data-dir",
                          str(tmp_path), "--workers", "1", "--dim", "4096", "--capacity-normal",
                          "100000000"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "MiB of shared memory" in out.stderr and "--capacity-*" in out.stderr
    assert not instance_objects("too-big")


def test_load_and_recall_commands(engine_factory):
    ep = engine_factory()
    out = subprocess.run([sys.executable, "-m", "engine", "load", "--name", ep.name, "--rate", "2000",
                          "--duration", "2", "--spaces", "3", "--load-batch", "50"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sent " in out.stdout and "accepted" in out.stdout
    sent = int(out.stdout.split("sent ")[1].split()[0])
    assert 3000 <= sent <= 4100  # 2 s at 2000/s, in batches of 50
    wait_for(lambda: total_vectors(ep) == sent, 60, message="load inserted")
    assert set(ep.status()["spaces"]) == {"default", "space-1", "space-2"}
    rec = subprocess.run([sys.executable, "-m", "engine", "recall", "--name", ep.name, "--space", "default",
                          "--random", "--k", "4", "--json"], capture_output=True, text=True, timeout=60)
    assert rec.returncode == 0, rec.stderr
    res = json.loads(rec.stdout)
    assert len(res["ids"]) == 4 and res["complete"] is True
    assert res["distances"] == sorted(res["distances"])


def test_metrics_address_in_use_is_refused_at_start(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "engine", "run", "--name", "port-busy", "--data-dir",
                              str(tmp_path), "--workers", "1", "--dim", "8", "--metrics-addr",
                              f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"--metrics-addr='127.0.0.1:{port}'" in out.stderr and "in use" in out.stderr
    assert not instance_objects("port-busy")


def test_killed_supervisor_takes_its_workers_and_producers_are_refused(engine_factory):
    from engine.errors import NotRunning
    ep = engine_factory()
    eng = ep.engine()
    workers = [w["pid"] for w in ep.status()["workers"]]
    os.kill(ep.proc.pid, signal.SIGKILL)
    ep.proc.wait(30)

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as fh:  # a zombie waiting to be reaped counts as gone
            return fh.read().split(") ")[1].startswith("Z")
    wait_for(lambda: all(gone(p) for p in workers), 30, message="workers died with their supervisor")
    with pytest.raises(NotRunning, match="is gone"):
        eng.observe("orphaned", [1], np.ones((1, DIM), np.float32))


def test_status_of_a_killed_instance_says_not_running(engine_factory):
    ep = engine_factory()
    os.killpg(ep.proc.pid, signal.SIGKILL)
    ep.proc.wait(30)
    out = subprocess.run([sys.executable, "-m", "engine", "status", "--name", ep.name],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "is not running" in out.stderr and "dead run" in out.stderr
