"""The write-ahead log with real workers: recovery after kill -9, stop and start,
damaged tails, a changed worker count, a poison batch. (The whole process
group killed: tests/chaos/test_process_group_kill.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


from engine.storage import deadletter
from engine.storage.walgen import generations
from metrics import readout
from tests.harness import EngineProcess, batch, observe_all, total, wait_for

DIM = 16


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
    second = first.successor()
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
    second = first.successor()
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


def test_poison_batch_is_dead_lettered_after_two_crashes(tmp_path):
    """A record that makes its worker die (test hook) is found and set aside in
    the dead-letter file after it killed two workers; everything else is
    inserted and the engine keeps serving."""
    import json as _json
    # batch-min = batch-max: a worker claims everything queued at once, so the
    # claim that meets 777 starts before it (the count of deaths below
    # depends on that; a claim sized by the measured insert rate could start
    # at 777 itself on a loaded machine, and then the batch death is the
    # record's first death)
    ep = EngineProcess(tmp_path, steal_threshold=100000, batch_min=1000, batch_max=1000,
                       hooks={"crash_on_id": 777})
    ep.start()
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
