"""The write-ahead log format: round trip, damaged tails, the fsync interval policy."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.storage.wal import WalWriter, replay
from tests.harness import batch

DIM = 16


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
