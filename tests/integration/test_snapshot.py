"""Snapshots and recovery in real engines: snapshots while ingesting, a final
snapshot at stop, kill -9 in the middle of one, a data directory that cannot
be written, a snapshot that does not fit. Real engines through
``tests.harness``; every wait polls a deadline.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import urllib.request

import numpy as np
import psutil

from engine.storage import snapshots
from engine.storage.walgen import generations
from metrics import readout
from tests.harness import EngineProcess, batch, observe_all, total, wait_for

DIM = 16


def metric(ep, name) -> np.ndarray:
    eng = ep.engine()
    return readout.block(eng.inst.metrics, eng.inst.metrics.snapshot(), name)


def snapshots_ok(ep) -> int:
    return int(metric(ep, "snapshots_total")[:, 0].sum())


def ingest(eng, spaces, n, seed, chunk=200, start=0):
    """n observations spread over ``spaces``; returns {space: (ids, vectors)}."""
    ids, vecs = batch(n, seed, start)
    out = {}
    for k in range(0, n, chunk):
        space = spaces[(k // chunk) % len(spaces)]
        observe_all(eng, space, ids[k:k + chunk], vecs[k:k + chunk])
        prev = out.get(space, (ids[:0], vecs[:0]))
        out[space] = (np.concatenate([prev[0], ids[k:k + chunk]]), np.concatenate([prev[1], vecs[k:k + chunk]]))
    return out


def assert_each_exactly_once(ep, placed):
    st = ep.status()
    eng = ep.engine()
    for space, (ids, vecs) in placed.items():
        assert st["spaces"][space]["vectors"] == len(ids), space  # no loss, no duplicate label
        res = eng.recall(space, vecs, k=1)
        assert res.complete
        assert (res.ids[:, 0] == ids).mean() >= 0.99  # each its own top-1 (HNSW is approximate)


def test_snapshots_while_ingesting_delete_covered_logs_and_a_kill_recovers_everything(engine_factory):
    ep = engine_factory(snapshot_wal_bytes=20000, fsync="interval")
    eng = ep.engine()
    placed = ingest(eng, ["snap-a", "snap-b", "snap-c"], 6000, 1)
    sent = 6000
    # Snapshots follow the log's growth; how many a given amount of data makes
    # depends on how long each takes here: ingest on until there are several.
    while snapshots_ok(ep) < 6 and sent < 30000:
        more = ingest(eng, ["snap-a", "snap-b", "snap-c"], 1000, 100 + sent // 1000, start=sent)
        for space, (ids, vecs) in more.items():
            placed[space] = (np.concatenate([placed[space][0], ids]), np.concatenate([placed[space][1], vecs]))
        sent += 1000
    wait_for(lambda: total(ep) == sent, 60, message="inserted")
    wait_for(lambda: snapshots_ok(ep) >= 6, 60, message="several snapshots taken while ingesting")
    for slot in range(2):
        sdir = snapshots.slot_dir(ep.data_dir, slot)
        # A snapshot renamed into place but not yet in the manifest may show for a moment.
        kept = wait_for(lambda: (lambda k: k if sorted(n for n in os.listdir(sdir) if n.startswith("gen-"))
                                 == sorted(e.dir for e in k) else None)(snapshots.read_manifest(sdir)),
                        30, message="snapshot directories = the manifest's")
        assert len(kept) == 2
        gens = [g for g, _ in generations(ep.data_dir, slot)]
        assert gens and min(gens) >= kept[0].generation  # logs under the older snapshot deleted
    assert metric(ep, "snapshot_duration_seconds")[..., -1].sum() >= 6  # histogram _count
    assert metric(ep, "wal_size_bytes").max() > 0
    # More data after the last snapshot, then kill both workers: snapshot + log tail.
    more = ingest(eng, ["snap-a", "snap-d"], 1000, 2, start=100000)
    for space, (ids, vecs) in more.items():
        old = placed.get(space, (ids[:0], vecs[:0]))
        placed[space] = (np.concatenate([old[0], ids]), np.concatenate([old[1], vecs]))
    wait_for(lambda: total(ep) == sent + 1000, 60, message="second part inserted")
    for w in ep.status()["workers"]:
        os.kill(w["pid"], signal.SIGKILL)
    wait_for(lambda: all(w["state"] == "running" and w["restarts"] == 1 for w in ep.status()["workers"]),
             60, message="both replaced")
    assert "loaded snapshot gen-" in ep.log()
    assert_each_exactly_once(ep, placed)


def test_stop_takes_a_final_snapshot_and_a_corrupt_newest_falls_back(tmp_path):
    first = EngineProcess(tmp_path, workers=1, snapshot_wal_bytes=30000)
    try:
        first.start()
        placed = ingest(first.engine(), ["keep-a", "keep-b"], 3000, 3)
        wait_for(lambda: total(first) == 3000, 60, message="inserted")
        wait_for(lambda: snapshots_ok(first) >= 1, 60, message="a snapshot while running")
        assert first.terminate(60) == 0
    finally:
        first.cleanup()
    sdir = snapshots.slot_dir(first.data_dir, 0)
    kept = snapshots.read_manifest(sdir)
    assert len(kept) == 2 and kept[1].vectors == 3000  # the final one holds everything
    # The final snapshot leaves only an empty log generation to replay.
    assert all(os.path.getsize(p) == 0 for g, p in generations(first.data_dir, 0) if g >= kept[1].generation)
    victim = os.path.join(sdir, kept[1].dir, "keep-a.hnsw")
    with open(victim, "r+b") as fh:
        fh.seek(os.path.getsize(victim) // 2)
        fh.write(b"\x00\x11\x22\x33")
    second = first.successor()
    try:
        second.start()
        assert_each_exactly_once(second, placed)
        log = second.log()
        assert f"snapshot {kept[1].dir} is corrupt" in log and f"loaded snapshot {kept[0].dir}" in log
        assert metric(second, "snapshot_fallbacks_total").sum() == 1
    finally:
        second.terminate(60)
        second.cleanup()


def test_kill_9_during_a_snapshot_loses_nothing_and_leaves_no_temp_files(tmp_path):
    # The snapshot child holds its temp directory open for 30 s (hook).
    ep = EngineProcess(tmp_path, workers=1, snapshot_wal_bytes=30000, hooks={"snapshot_pause_s": 30})
    try:
        ep.start()
        placed = ingest(ep.engine(), ["mid-a", "mid-b"], 2000, 4)
        wait_for(lambda: total(ep) == 2000, 60, message="inserted")
        sdir = snapshots.slot_dir(ep.data_dir, 0)
        tmp = wait_for(lambda: [n for n in os.listdir(sdir) if n.startswith("tmp-")], 60,
                       message="a snapshot being written")
        worker = psutil.Process(ep.status()["workers"][0]["pid"])
        (snap_child,) = worker.children()
        assert tmp == [n for n in tmp if n.endswith(f"-{snap_child.pid}")]
        worker.kill()
        wait_for(lambda: not snap_child.is_running() or snap_child.status() == psutil.STATUS_ZOMBIE, 30,
                 message="the snapshot child dies with its worker")
        wait_for(lambda: ep.status()["workers"][0]["restarts"] == 1
                 and ep.status()["workers"][0]["state"] == "running", 60, message="worker replaced")
        # The new worker may be writing a snapshot of its own; the dead child's is gone.
        assert not os.path.exists(os.path.join(sdir, tmp[0]))
        assert "removed 1 unfinished or unlisted snapshot" in ep.log()
        assert_each_exactly_once(ep, placed)
    finally:
        ep.terminate(60)
        ep.cleanup()


def health(ep) -> dict:
    port = ep.exporter_port()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/system/health", timeout=10) as resp:
        return json.loads(resp.read())


def test_disk_full_stops_admission_keeps_recall_and_resumes_without_loss(tmp_path):
    """The worker's file-size limit is lowered below its log's size (EFBIG on
    every append, as on a full disk); the accepted batch waits uncommitted."""
    first = EngineProcess(tmp_path, workers=1, fsync="always", snapshot_wal_bytes=0, snapshot_interval=0)
    try:
        first.start()
        eng = first.engine()
        ids, vecs = batch(1000, 5)
        observe_all(eng, "full", ids[:500], vecs[:500])
        wait_for(lambda: total(first) == 500, 60, message="first part inserted")
        pid = first.status()["workers"][0]["pid"]
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        newest = generations(first.data_dir, 0)[-1][1]
        size = os.path.getsize(newest)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size + 10, hard))
        assert eng.observe("full", ids[500:800], vecs[500:800]).accepted == 300
        wait_for(lambda: metric(first, "data_dir_unwritable").max() == 1, 30, message="unwritable reported")
        assert os.path.getsize(newest) == size  # the 10 bytes that fitted were cut back: no torn record
        for priority in ("high", "normal", "low"):
            ack = eng.observe("full", ids[800:810], vecs[800:810], priority=priority)
            assert ack.accepted == 0 and ack.rejected == {"over_capacity": 10}
            assert ack.backpressure == "overloaded" and "not writable" in ack.message and "EFBIG" in ack.message
        h = health(first)
        assert h["components"]["storage"]["status"] == "down" and "EFBIG" in h["components"]["storage"]["reason"]
        assert not h["ready"]
        res = eng.recall("full", vecs[:100], k=1)  # recall keeps working
        assert res.complete and (res.ids[:, 0] == ids[:100]).mean() >= 0.98
        assert metric(first, "batch_failures_total")[0, 2] >= 1  # error_type wal_error
        assert first.status()["workers"][0]["restarts"] == 0
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        wait_for(lambda: metric(first, "data_dir_unwritable").max() == 0, 30, message="writable again")
        assert "writable again" in first.log()
        observe_all(eng, "full", ids[800:], vecs[800:])
        wait_for(lambda: total(first) == 1000, 60, message="everything accepted inserted")
        assert health(first)["components"]["storage"]["status"] == "up"
        assert_each_exactly_once(first, {"full": (ids, vecs)})
        os.kill(pid, signal.SIGKILL)  # no final snapshot: the next start replays the whole log
        wait_for(lambda: first.status()["workers"][0]["restarts"] == 1
                 and first.status()["workers"][0]["state"] == "running", 60, message="replaced")
        assert_each_exactly_once(first, {"full": (ids, vecs)})
        assert metric(first, "wal_bytes_dropped_total").sum() == 0  # the log replays cleanly
        assert "torn or corrupt" not in first.log()
    finally:
        first.terminate(60)
        first.cleanup()


def test_snapshot_without_room_is_counted_and_retried(engine_factory):
    """A file-size limit that the small log generations fit under but a
    snapshot file does not: snapshots fail, are counted, nothing else stops."""
    # 2,000 vectors of dim 16 are ~144 KB of log in all; a snapshot is due at
    # 100 KB of log (~1,400 vectors), and its file (~200 B a vector) exceeds 200 KB.
    ep = engine_factory(workers=1, snapshot_wal_bytes=100000, batch_max=100)
    eng = ep.engine()
    pid = ep.status()["workers"][0]["pid"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (200 * 1024, hard))
    placed = ingest(eng, ["room"], 2000, 6, chunk=100)
    wait_for(lambda: total(ep) == 2000, 60, message="inserted")
    wait_for(lambda: metric(ep, "snapshots_total")[:, 1].sum() >= 1, 60, message="a failed snapshot")
    assert metric(ep, "data_dir_unwritable").max() == 0
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    wait_for(lambda: snapshots_ok(ep) >= 1, 60, message="a snapshot after the retry")
    assert ep.status()["workers"][0]["restarts"] == 0
    assert "snapshot failed" in ep.log()
    assert not [n for n in os.listdir(snapshots.slot_dir(ep.data_dir, 0)) if n.startswith("tmp-")]
    assert_each_exactly_once(ep, placed)
