"""The write-ahead log: format, damage handling, and recovery by real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import EngineProcess, observe_all, wait_for
from engine.storage import deadletter
from engine.storage.wal import WalWriter, replay
from engine.storage.walgen import generations
from metrics import readout

DIM = 16


def batch(n, seed, start=0):
    rng = np.random.default_rng(seed)
    return np.arange(start, start + n, dtype=np.uint64), rng.standard_normal((n, DIM)).astype(np.float32)


def read_all(path):
    out = []
    stats = replay(path, lambda s, i, v: out.append((s, i.copy(), v.copy())))
    return out, stats


def test_round_trip_in_order(tmp_path):
    path = str(tmp_path / "wal" / "slot-0.log")
    w = WalWriter(path, "always")
    written = [("alpha",) + batch(3, 1), ("beta",) + batch(5, 2, 100)]
    for space, ids, vecs in written:
        nbytes, synced = w.append(space, ids, vecs)
        assert nbytes > ids.nbytes + vecs.nbytes and synced is not None  # always: synced each time
    w.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    got, stats = read_all(path)
    assert stats.records == 2 and stats.vectors == 8 and stats.dropped_bytes == 0
    for (s1, i1, v1), (s2, i2, v2) in zip(written, got):
        assert s1 == s2 and (i1 == i2).all() and np.array_equal(v1, v2)


@pytest.mark.parametrize("damage", ["torn", "garbage", "bitflip"])
def test_damaged_tail_is_cut_off_and_counted(tmp_path, damage):
    path = str(tmp_path / "slot-0.log")
    w = WalWriter(path, "never")
    for k in range(3):
        w.append("space", *batch(4, k, 10 * k))
    w.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        if damage == "torn":
            fh.truncate(size - 7)  # the last record lost its end
        elif damage == "garbage":
            fh.seek(0, 2)
            fh.write(os.urandom(100))  # junk after three good records
        else:
            fh.seek(size - 20)
            b = fh.read(1)
            fh.seek(size - 20)
            fh.write(bytes([b[0] ^ 0xFF]))  # the last record's checksum no longer matches
    got, stats = read_all(path)
    good = 3 if damage == "garbage" else 2
    assert stats.records == good and len(got) == good
    assert stats.dropped_bytes > 0
    # The file now ends at the last good record: appends follow good data.
    again, stats2 = read_all(path)
    assert stats2.records == good and stats2.dropped_bytes == 0
    w = WalWriter(path, "never")
    w.append("space", *batch(1, 9, 999))
    w.close()
    assert read_all(path)[1].records == good + 1


def test_interval_policy_syncs_when_a_second_old(tmp_path):
    now = [0.0]
    w = WalWriter(str(tmp_path / "x.log"), "interval", clock=lambda: now[0])
    assert w.append("space", *batch(1, 1))[1] is None  # last sync is fresh
    assert w.tick() is None
    now[0] += 1.5
    assert w.tick() is not None and not w.dirty
    w.close()


def total(ep) -> int:
    return sum(s["vectors"] for s in ep.status()["spaces"].values())


def test_kill_9_worker_comes_back_with_its_shards(engine_factory):
    ep = engine_factory(fsync="always")
    eng = ep.engine()
    ids, vecs = batch(2000, 3)
    for k, space in enumerate(("wal-a", "wal-b")):
        observe_all(eng, space, ids[k * 1000:(k + 1) * 1000], vecs[k * 1000:(k + 1) * 1000])
    wait_for(lambda: total(ep) == 2000, 60, message="inserted")
    for w in ep.status()["workers"]:
        os.kill(w["pid"], signal.SIGKILL)
    wait_for(lambda: all(w["state"] == "running" and w["restarts"] == 1 for w in ep.status()["workers"]),
             60, message="both replaced")
    wait_for(lambda: total(ep) == 2000, 60, message="shards recovered from the log")
    res = eng.recall("wal-a", vecs[:100], k=1)
    assert (res.ids[:, 0] == ids[:100]).mean() >= 0.98 and res.complete
    snap = eng.inst.metrics.snapshot()
    assert readout.block(eng.inst.metrics, snap, "wal_records_recovered_total").sum() >= 2
    assert readout.block(eng.inst.metrics, snap, "wal_appends_total").sum() >= 2


def test_stop_and_start_again_keeps_every_vector(tmp_path):
    first = EngineProcess(tmp_path, fsync="interval")
    try:
        first.start()
        eng = first.engine()
        ids, vecs = batch(1500, 4)
        observe_all(eng, "keep-me", ids, vecs)
        wait_for(lambda: total(first) == 1500, 60, message="inserted")
        assert first.terminate(60) == 0
    finally:
        first.cleanup()
    second = EngineProcess(tmp_path)
    second.name, second.data_dir = first.name, first.data_dir
    second.args = first.args
    try:
        second.start()
        assert second.status()["spaces"]["keep-me"]["vectors"] == 1500
        res = second.engine().recall("keep-me", vecs[:50], k=1)
        assert (res.ids[:, 0] == ids[:50]).mean() >= 0.98
        assert "recovered" in second.log()
    finally:
        second.terminate(60)
        second.cleanup()


def test_corrupt_log_tail_is_reported_and_the_rest_recovered(tmp_path):
    first = EngineProcess(tmp_path, workers=1)
    try:
        first.start()
        observe_all(first.engine(), "damaged", *batch(300, 5))
        wait_for(lambda: total(first) == 300, 60, message="inserted")
        assert first.terminate(60) == 0
    finally:
        first.cleanup()
    # The stop took a final snapshot; the newest log generation is the one replayed after it.
    newest = generations(first.data_dir, 0)[-1][1]
    with open(newest, "ab") as fh:
        fh.write(b"\x57\x41\x4c\x31" + os.urandom(64))  # a record header and garbage: a torn append
    second = EngineProcess(tmp_path, workers=1)
    second.name, second.data_dir, second.args = first.name, first.data_dir, first.args
    try:
        second.start()
        assert second.status()["spaces"]["damaged"]["vectors"] == 300
        assert "torn or corrupt tail" in second.log()
        eng = second.engine()
        dropped = readout.block(eng.inst.metrics, eng.inst.metrics.snapshot(), "wal_bytes_dropped_total")
        assert dropped.sum() == 68
    finally:
        second.terminate(60)
        second.cleanup()


def test_other_worker_count_on_the_same_data_dir_is_refused(tmp_path):
    first = EngineProcess(tmp_path)
    try:
        first.start()
        assert first.terminate(60) == 0
    finally:
        first.cleanup()
    out = subprocess.run([sys.executable, "-m", "engine", "run", "--name", first.name, "--data-dir",
                          first.data_dir, "--workers", "1", "--dim", str(DIM)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "holds write-ahead logs of an engine with 2 workers" in out.stderr
    assert "--workers 2" in out.stderr


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


def test_killed_process_group_loses_no_acknowledged_observation(tmp_path):
    """kill -9 of supervisor, workers and exporter at once, with observations
    queued and some claimed in flight: the next start carries them over from
    the dead run's shared memory, replays the logs, and has every one, once."""
    from engine.control.layouts import LANE_INDEX
    from engine.producer.routing import home_slot
    first = EngineProcess(tmp_path, fsync="always", steal_threshold=100000)
    try:
        first.start()
        eng = first.engine()
        ids, vecs = batch(1300, 8)
        observe_all(eng, "survivor", ids[:300], vecs[:300])
        wait_for(lambda: total(first) == 300, 60, message="first part inserted (and logged)")
        pids = [w["pid"] for w in first.status()["workers"]]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        assert eng.observe("survivor", ids[300:], vecs[300:]).accepted == 1000
        slot = home_slot("survivor", 2)
        ring = eng.inst.ring(slot, LANE_INDEX["normal"])
        claims = ring.claim_many(400, 200, slot)  # in flight in the worker's name when all died
        assert sum(c.count for c in claims) == 400
        os.killpg(first.proc.pid, signal.SIGKILL)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        first.proc.wait(30)
        eng.close()
        first._engine = None
    finally:
        if first.proc.poll() is None:
            first.cleanup()
    second = EngineProcess(tmp_path, fsync="always", steal_threshold=100000)
    second.name, second.data_dir, second.args = first.name, first.data_dir, first.args
    try:
        second.start()
        wait_for(lambda: total(second) == 1300, 60, message="every acknowledged observation back")
        assert "carried over 1000 acknowledged observation(s)" in second.log()
        wait_for(lambda: all(w["state"] == "running" for w in second.status()["workers"]), 60,
                 message="both slots running again")
        res = second.engine().recall("survivor", vecs, k=1)
        assert res.complete
        assert (res.ids[:, 0] == ids).mean() >= 0.99
    finally:
        second.terminate(60)
        second.cleanup()
        first.cleanup()


def test_poison_batch_is_dead_lettered_after_two_crashes(tmp_path):
    """A record that makes its worker die (test hook) is found and set aside in
    the dead-letter file after it killed two workers; everything else is
    inserted and the engine keeps serving."""
    import json as _json
    ep = EngineProcess(tmp_path, steal_threshold=100000)
    env_before = os.environ.get("ENGRAM_TEST_CRASH_ON_ID")
    os.environ["ENGRAM_TEST_CRASH_ON_ID"] = "777"
    try:
        ep.start()  # the hook reaches the engine through its environment
    finally:
        if env_before is None:
            del os.environ["ENGRAM_TEST_CRASH_ON_ID"]
        else:
            os.environ["ENGRAM_TEST_CRASH_ON_ID"] = env_before
    try:
        eng = ep.engine()
        good_ids, good_vecs = batch(400, 9, 1000)
        observe_all(eng, "healthy", good_ids, good_vecs)
        poison_ids, poison_vecs = batch(50, 10, 750)  # ids 750..799 include 777
        assert eng.observe("poisoned", poison_ids, poison_vecs).accepted == 50
        wait_for(lambda: len(deadletter.read_all(ep.data_dir)) == 1, 60, message="poison batch dead-lettered")
        wait_for(lambda: all(w["state"] == "running" for w in ep.status()["workers"]), 60, message="serving")
        st = ep.status()
        assert st["spaces"]["healthy"]["vectors"] == 400
        assert st["spaces"]["poisoned"]["vectors"] == 49  # only the poison itself is set aside
        # One death on the batch, then two on the record once processed one by one.
        assert sum(w["restarts"] for w in st["workers"]) == 3
        snap = eng.inst.metrics.snapshot()
        assert readout.block(eng.inst.metrics, snap, "deadletter_batches_total").sum() == 1
        out = subprocess.run([sys.executable, "-m", "engine", "deadletter", "--data-dir", ep.data_dir, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (record,) = _json.loads(out.stdout)
        assert record["ids"] == [777] and record["spaces"] == ["poisoned"]
        assert "died 2 times" in record["reason"]
        assert "moved to" in ep.log()
        more_ids, more_vecs = batch(100, 11, 5000)
        observe_all(eng, "healthy", more_ids, more_vecs)  # still serving
        wait_for(lambda: total(ep) == 549, 60, message="more inserted after the poison")
    finally:
        ep.terminate(60)
        ep.cleanup()
