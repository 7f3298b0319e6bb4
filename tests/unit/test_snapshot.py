"""Snapshots, log generations and recovery from both, without processes: the
manifest writer, snapshot checksums, the WAL writer's cut-back after a failed
append, log rotation, recovery falling back to an older snapshot.
"""

from __future__ import annotations

import errno
import json
import os

import hnswlib
import pytest

from engine.storage import recovery
from engine.storage import snapshots
from engine.worker.shards import ShardSet
from engine.errors import SnapshotError
from engine.storage.snapshots import Entry
from engine.storage.wal import WalWriter, replay
from engine.storage.walgen import WalLog, generation_path, generations, legacy_path
from tests.harness import batch

DIM = 16
META = {"slot": 0, "dim": DIM, "metric": "cosine"}


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


# -- manifest and checksums ----------------------------------------------------------
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


# -- the log -------------------------------------------------------------------------
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
