"""A damaged write-ahead log record costs that record, not the rest of the file.

Unit tests build logs with ``WalWriter``, damage them at known offsets and
check that replay returns exactly the intact records and counts exactly what
it skipped (in the middle, left in place) and cut (at the tail). The same
done to the logs of a real engine: tests/integration/test_wal_resync.py.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from engine.storage.wal import WalWriter, replay
from tests.harness import batch

DIM = 16
N = 12  # records per test log
HEAD2 = 24  # format-2 header (engine/storage/wal.py)


def write_log(path, n=N):
    """``n`` records of different sizes; returns [(space, ids, vectors, offset, length)]."""
    w = WalWriter(str(path), "never")
    out, off = [], os.path.getsize(path) if os.path.exists(path) else 0
    for k in range(n):
        ids, vecs = batch(3 + k % 5, k, 100 * k)
        nbytes, _ = w.append(f"space-{k % 3}", ids, vecs)
        out.append((f"space-{k % 3}", ids, vecs, off, nbytes))
        off += nbytes
    w.close()
    return out


def read(path, **kw):
    got = []
    stats = replay(str(path), lambda s, i, v: got.append((s, i.copy(), v.copy())), **kw)
    return got, stats


def assert_records(got, expected):
    assert [(s, i.tolist()) for s, i, _ in got] == [(r[0], r[1].tolist()) for r in expected]
    for (_, _, v), r in zip(got, expected):
        assert np.array_equal(v, r[2])


def flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def skipped(stats):
    return [(d.offset, d.length, d.reason, d.records) for d in stats.skipped]


def test_flipped_payload_byte_skips_exactly_that_record(tmp_path):
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    _, _, _, off, length = recs[5]
    flip(path, off + HEAD2 + length // 2 - 12)  # inside the vectors
    before = path.read_bytes()
    got, stats = read(path)
    assert_records(got, recs[:5] + recs[6:])
    assert skipped(stats) == [(off, length, "corrupt_payload", 1)]
    assert stats.dropped_bytes == 0 and stats.dropped_records == 0
    assert path.read_bytes() == before  # a damaged middle is left in place, nothing cut


@pytest.mark.parametrize("field_offset", [0, 3, 5, 9, 17, 22], ids=[
    "magic", "format-byte", "length", "sequence", "payload-crc-field", "header-crc"])
def test_flipped_header_byte_resyncs_on_the_next_record(tmp_path, field_offset):
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    _, _, _, off, length = recs[7]
    flip(path, off + field_offset)
    got, stats = read(path)
    assert_records(got, recs[:7] + recs[8:])
    assert skipped(stats) == [(off, length, "corrupt_header", 1)]
    assert stats.dropped_bytes == 0 and os.path.getsize(path) == recs[-1][3] + recs[-1][4]


def test_damaged_header_then_damaged_payload_count_two_records(tmp_path):
    """The forward scan passes the second record too (its header is intact, its
    payload not); the sequences on either side still count exactly two."""
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    flip(path, recs[3][3] + 5)
    flip(path, recs[4][3] + HEAD2 + 20)
    got, stats = read(path)
    assert_records(got, recs[:3] + recs[5:])
    assert skipped(stats) == [(recs[3][3], recs[3][4] + recs[4][4], "corrupt_header", 2)]


def test_damage_at_the_start_of_the_file(tmp_path):
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    flip(path, 1)
    got, stats = read(path)
    assert_records(got, recs[1:])
    assert skipped(stats) == [(0, recs[0][4], "corrupt_header", 1)]


@pytest.mark.parametrize("junk", ["random", "fake-headers"])
def test_garbage_between_records_is_skipped_and_loses_no_record(tmp_path, junk):
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    rng = np.random.default_rng(5)
    garbage = bytearray(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    if junk == "fake-headers":  # record magics with nonsense after them must not fool the scan
        for at in (0, 300, 700):
            garbage[at:at + 4] = b"WAL2" if at != 300 else b"WAL1"
    data = path.read_bytes()
    cut = recs[6][3]
    path.write_bytes(data[:cut] + bytes(garbage) + data[cut:])
    got, stats = read(path)
    assert_records(got, recs)
    assert skipped(stats) == [(cut, 1000, "corrupt_header", 0)]
    assert stats.dropped_bytes == 0


@pytest.mark.parametrize("left", [50, 10], ids=["torn-in-payload", "torn-in-header"])
def test_torn_tail_is_cut_off_and_counted(tmp_path, left):
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    last_off, last_len = recs[-1][3], recs[-1][4]
    with open(path, "r+b") as fh:
        fh.truncate(last_off + (last_len - 50 if left == 50 else 10))
    size = os.path.getsize(path)
    got, stats = read(path)
    assert_records(got, recs[:-1])
    assert stats.skipped == []
    assert stats.dropped_bytes == size - last_off
    assert stats.dropped_records == (1 if left == 50 else 0)  # a header torn itself is not recognisable
    assert os.path.getsize(path) == last_off


def test_reading_a_live_log_does_not_cut_it(tmp_path):
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    with open(path, "ab") as fh:
        fh.write(b"WAL2" + b"\0" * 30)  # an append in progress
    got, stats = read(path, cut_tail=False)
    assert_records(got, recs)
    assert stats.dropped_bytes == 34 and os.path.getsize(path) == recs[-1][3] + recs[-1][4] + 34


def test_append_after_recovering_a_damaged_log_replays_again(tmp_path):
    """Payload damage, header damage and a torn tail; recovery cuts the tail
    only; a writer reopening the file continues the sequence, so the next
    replay gets everything intact and counts the same damage again, exactly."""
    path = tmp_path / "slot-0.1.log"
    recs = write_log(path)
    flip(path, recs[2][3] + HEAD2 + 30)
    flip(path, recs[8][3] + 6)
    with open(path, "r+b") as fh:
        fh.truncate(recs[-1][3] + recs[-1][4] - 7)
    intact = recs[:2] + recs[3:8] + recs[9:-1]
    got, first = read(path)
    assert_records(got, intact)
    expected_skips = [(recs[2][3], recs[2][4], "corrupt_payload", 1), (recs[8][3], recs[8][4], "corrupt_header", 1)]
    assert skipped(first) == expected_skips
    assert first.dropped_bytes == recs[-1][4] - 7 and first.dropped_records == 1

    w = WalWriter(str(path), "never")
    assert w.seq == N - 1  # the torn record's sequence is reused: nothing is missing between them
    more = [batch(4, 50 + k, 5000 + 10 * k) for k in range(2)]
    for ids, vecs in more:
        w.append("after", ids, vecs)
    w.close()
    got, second = read(path)
    assert_records(got, intact + [("after", i, v) for i, v in more])
    assert skipped(second) == expected_skips
    assert second.dropped_bytes == 0


def encode_format1(space, ids, vecs):
    """A record as earlier versions wrote it (layout in engine/storage/wal.py)."""
    name = space.encode()
    payload = struct.pack("<H", len(name)) + name + struct.pack("<II", *vecs.shape) \
        + ids.astype("<u8").tobytes() + vecs.astype("<f4").tobytes()
    return struct.pack("<III", 0x314C4157, len(payload), zlib.crc32(payload)) + payload


def test_old_format_log_is_read_past_damage_and_appended_to(tmp_path):
    path = tmp_path / "slot-0.log"
    recs, data = [], b""
    for k in range(8):
        ids, vecs = batch(5, 70 + k, 10 * k)
        rec = encode_format1("old", ids, vecs)
        recs.append(("old", ids, vecs, len(data), len(rec)))
        data += rec
    path.write_bytes(data)
    flip(path, recs[3][3] + 40)  # payload: the declared length still leads to the next record
    flip(path, recs[5][3] + 1)  # magic
    got, stats = read(path)
    assert_records(got, recs[:3] + [recs[4]] + recs[6:])
    assert skipped(stats) == [(recs[3][3], recs[3][4], "corrupt_payload", 1),
                              (recs[5][3], recs[5][4], "corrupt_header", 1)]
    ids, vecs = batch(2, 99, 900)
    w = WalWriter(str(path), "never")  # format-2 records after format-1 ones
    w.append("new", ids, vecs)
    w.close()
    got, _ = read(path)
    assert_records(got, recs[:3] + [recs[4]] + recs[6:] + [("new", ids, vecs)])
