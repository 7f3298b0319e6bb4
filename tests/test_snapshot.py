"""Snapshots, log generations, recovery from both, and a data directory that cannot be written.

Unit tests (no processes) cover the manifest writer, snapshot checksums and
the WAL writer's cut-back after a failed append; the rest run real engines
through the conftest helpers and poll deadlines.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import urllib.request

import hnswlib
import numpy as np
import psutil
import pytest

from conftest import EngineProcess, observe_all, wait_for
from engine.storage import recovery
from engine.storage import snapshots
from engine.worker.shards import ShardSet
from engine.errors import SnapshotError
from engine.storage.snapshots import Entry
from engine.storage.wal import WalWriter, replay
from engine.storage.walgen import WalLog, generation_path, generations, legacy_path
pass
from metrics import readout

DIM = 16
META = {"slot": 0, "dim": DIM, "metric": "cosine"}


def batch(n, seed, start=0):
    rng = np.random.default_rng(seed)
    return np.arange(start, start + n, dtype=np.uint64), rng.standard_normal((n, DIM)).astype(np.float32)


def small_index(n, seed=0):
    ids, vecs = batch(n, seed)
    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=max(n, 1), M=8, ef_construction=50)
    if n:
        index.add_items(vecs, ids, num_threads=1)
    return index


class Recorder:
    """Stands in for a MetricWriter: remembers what was recorded."""

    def __init__(self):
        self.counts: dict[str, float] = {}

    def inc(self, name, value=1, **labels):
        self.counts[name] = self.counts.get(name, 0) + value

    def set(self, name, value, **labels):
        self.counts[name] = value

    def observe(self, name, value, **labels):
        self.counts[name + "_count"] = self.counts.get(name + "_count", 0) + 1


# -- manifest and checksums (unit) ----------------------------------------------------
def test_manifest_is_replaced_atomically_and_ignores_a_torn_temp_file(tmp_path):
    sdir = str(tmp_path)
    snapshots.write_manifest(sdir, 0, [Entry(3, "gen-3", 10)])
    # A crash while writing the next manifest leaves a torn temp file beside it.
    with open(os.path.join(sdir, "manifest.json.tmp"), "w") as fh:
        fh.write('{"format": 1, "snapsh')
    assert [e.generation for e in snapshots.read_manifest(sdir)] == [3]
    snapshots.write_manifest(sdir, 0, [Entry(3, "gen-3", 10), Entry(5, "gen-5", 20)])
    assert not os.path.exists(os.path.join(sdir, "manifest.json.tmp"))
    with open(os.path.join(sdir, "manifest.json")) as fh:
        raw = json.load(fh)
    assert [e["generation"] for e in raw["snapshots"]] == [3, 5] and raw["wal_from"] == 3
    assert os.stat(os.path.join(sdir, "manifest.json")).st_mode & 0o777 == 0o600
    with open(os.path.join(sdir, "manifest.json"), "w") as fh:
        fh.write("{not json")
    with pytest.raises(SnapshotError, match="unreadable"):
        snapshots.read_manifest(sdir)


def test_retention_keeps_two_and_the_log_after_the_older():
    e = [Entry(g, f"gen-{g}") for g in (2, 4, 7)]
    kept, dropped, wal_from = snapshots.retain(e)
    assert [x.generation for x in kept] == [4, 7] and dropped == [e[0]] and wal_from == 4
    kept, dropped, wal_from = snapshots.retain(e[:1])
    assert kept == e[:1] and dropped == [] and wal_from == 0  # one snapshot: keep the whole log


def test_snapshot_round_trip_and_every_kind_of_damage_is_detected(tmp_path):
    sdir = str(tmp_path)
    entry = snapshots.write(sdir, 4, [("alpha", small_index(300)), ("beta", small_index(0))], META)
    assert entry.dir == "gen-4" and entry.vectors == 300
    path = os.path.join(sdir, "gen-4")
    assert not [n for n in os.listdir(sdir) if n.startswith("tmp-")]
    loaded = dict(snapshots.load(path, META))
    assert loaded["alpha"].get_current_count() == 300 and loaded["beta"].get_current_count() == 0
    with pytest.raises(SnapshotError, match="dim"):
        snapshots.verify(path, {**META, "dim": DIM + 1})
    victim = os.path.join(path, "alpha.hnsw")
    original = open(victim, "rb").read()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x40
    open(victim, "wb").write(bytes(flipped))
    with pytest.raises(SnapshotError, match="CRC"):
        snapshots.load(path, META)
    open(victim, "wb").write(original[:-10])
    with pytest.raises(SnapshotError, match="bytes"):
        snapshots.verify(path, META)
    open(victim, "wb").write(original)
    snapshots.verify(path, META)
    os.unlink(os.path.join(path, "checksums.json"))
    with pytest.raises(SnapshotError, match="checksums unreadable"):
        snapshots.verify(path, META)


def test_a_silently_short_hnsw_file_fails_the_write(tmp_path, monkeypatch):
    """hnswlib's save_index does not report a failed write (disk full): the
    structure walk must catch the short file before it is called a snapshot."""
    real = hnswlib.Index.save_index

    class Short:
        def __init__(self, index):
            self.index = index

        def get_current_count(self):
            return self.index.get_current_count()

        def save_index(self, path):
            real(self.index, path)
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) - 100)

    with pytest.raises(SnapshotError, match="cut short"):
        snapshots.write(str(tmp_path), 2, [("alpha", Short(small_index(200)))], META)
    assert os.listdir(tmp_path) == []  # no temp directory, no snapshot


def test_cleanup_removes_temp_and_unlisted_directories(tmp_path):
    sdir = str(tmp_path)
    snapshots.write(sdir, 2, [("alpha", small_index(10))], META)
    snapshots.write(sdir, 3, [("alpha", small_index(10))], META)
    os.mkdir(os.path.join(sdir, "tmp-5-1234"))
    removed = snapshots.cleanup(sdir, [Entry(2, "gen-2")])
    assert sorted(removed) == ["gen-3", "tmp-5-1234"]
    assert sorted(os.listdir(sdir)) == ["gen-2"]


# -- the log (unit) -------------------------------------------------------------------
def test_failed_append_is_cut_back_and_the_next_one_follows_good_data(tmp_path, monkeypatch):
    path = str(tmp_path / "slot-0.1.log")
    w = WalWriter(path, "always")
    w.append("space", *batch(5, 1))
    good = os.path.getsize(path)
    real = os.writev

    def half_then_full(fd, parts):
        data = b"".join(bytes(p) for p in parts)
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", half_then_full)
    with pytest.raises(OSError):
        w.append("space", *batch(5, 2, 100))
    assert os.path.getsize(path) == good and w.size() == good
    monkeypatch.setattr(os, "writev", real)
    w.append("space", *batch(5, 2, 100))
    w.close()
    got = []
    stats = replay(path, lambda s, i, v: got.append(i.copy()))
    assert stats.records == 2 and stats.dropped_bytes == 0
    assert [int(i[0]) for i in got] == [0, 100]


def test_log_generations_rotate_and_read_the_old_single_file(tmp_path):
    data = str(tmp_path)
    os.makedirs(os.path.join(data, "wal"))
    legacy = WalWriter(legacy_path(data, 0), "never")
    legacy.append("space", *batch(2, 1))
    legacy.close()
    log = WalLog(data, 0, "never")
    assert log.generation == 1
    log.append("space", *batch(2, 2, 10))
    assert log.rotate() == 2
    assert [g for g, _ in generations(data, 0)] == [0, 1, 2]
    assert log.total_bytes() == sum(os.path.getsize(p) for _, p in generations(data, 0))
    assert log.remove_below(2) == [legacy_path(data, 0), generation_path(data, 0, 1)]
    assert [g for g, _ in generations(data, 0)] == [2]
    log.close()
    # A snapshot already covers generation 5: a new log starts there, not below.
    assert WalLog(data, 0, "never", first_generation=5).generation == 5


def test_recovery_falls_back_to_the_older_snapshot_and_replays_the_log(tmp_path):
    """Built by hand: log gen 1, snapshot gen-2, log gen 2, snapshot gen-3, log gen 3;
    the newest snapshot is damaged. Recovery must still end with all 900 vectors."""
    data = str(tmp_path)
    sdir = snapshots.slot_dir(data, 0)
    shards = ShardSet(DIM, "cosine", 8, 50, 32, 64)
    log = WalLog(data, 0, "never")
    entries = []
    for k in range(3):
        ids, vecs = batch(300, k, 300 * k)
        shards.insert(0, ids, vecs)
        log.append("space", ids, vecs)
        if k < 2:
            gen = log.rotate()
            entries.append(snapshots.write(sdir, gen, shards.named(lambda s: "space"), META))
    log.close()
    snapshots.write_manifest(sdir, 0, entries)
    with open(os.path.join(sdir, "gen-3", "space.hnsw"), "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff" * 8)
    fresh, counts, rec = ShardSet(DIM, "cosine", 8, 50, 32, 64), {}, Recorder()
    out = recovery.recover(data, 0, META, fresh, lambda name: 0, counts.__setitem__, rec)
    assert out.loaded.generation == 2 and rec.counts["snapshot_fallbacks_total"] == 1
    assert counts[0] == fresh.count(0) == 900
    assert out.records == 2  # log generations 2 and 3, after the older snapshot
    assert [e.generation for e in snapshots.read_manifest(sdir)] == [2]  # the bad one is dropped
    assert not os.path.exists(os.path.join(sdir, "gen-3"))
    assert sorted(fresh.shards[0].get_ids_list()) == list(range(900))


# -- real engines -----------------------------------------------------------------------
def metric(ep, name) -> np.ndarray:
    eng = ep.engine()
    return readout.block(eng.inst.metrics, eng.inst.metrics.snapshot(), name)


def snapshots_ok(ep) -> int:
    return int(metric(ep, "snapshots_total")[:, 0].sum())


def total(ep) -> int:
    return sum(s["vectors"] for s in ep.status()["spaces"].values())


def restart(tmp_path, first, **extra) -> EngineProcess:
    second = EngineProcess(tmp_path)
    second.name, second.data_dir, second.args = first.name, first.data_dir, first.args + [
        a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    return second


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
    wait_for(lambda: total(ep) == 6000, 60, message="inserted")
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
    wait_for(lambda: total(ep) == 7000, 60, message="second part inserted")
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
    second = restart(tmp_path, first)
    try:
        second.start()
        assert_each_exactly_once(second, placed)
        log = second.log()
        assert f"snapshot {kept[1].dir} is corrupt" in log and f"loaded snapshot {kept[0].dir}" in log
        assert metric(second, "snapshot_fallbacks_total").sum() == 1
    finally:
        second.terminate(60)
        second.cleanup()


def test_kill_9_during_a_snapshot_loses_nothing_and_leaves_no_temp_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_TEST_SNAPSHOT_PAUSE_S", "30")  # the child holds its temp directory open
    ep = EngineProcess(tmp_path, workers=1, snapshot_wal_bytes=30000)
    try:
        ep.start()
        monkeypatch.delenv("ENGRAM_TEST_SNAPSHOT_PAUSE_S")
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
    port = int(ep.engine().inst.header.exporter_port)
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
