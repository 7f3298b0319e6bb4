"""Stamps, the batch rule, and the log's format 3 (engine.ledger, engine.storage.wal)."""

from __future__ import annotations

import json

import numpy as np

from engine.ledger.book import newest
from engine.ledger.stamps import AHEAD_NS, MARGIN_NS, Ceiling, StampClock
from engine.storage.wal import FORGET, OBSERVE, WalWriter, replay


def test_newest_keeps_the_latest_operation_per_id():
    ids = np.array([5, 3, 5, 9, 3, 5], np.uint64)
    stamps = np.array([1, 2, 3, 1, 2, 3], np.uint64)  # 5: stamp 3 twice, the later wins
    assert newest(ids, stamps).tolist() == [3, 4, 5]
    assert newest(ids[:1], stamps[:1]).tolist() == [0]


def test_a_process_never_hands_out_the_same_stamp_twice():
    clock = StampClock(1000, clock_ns=lambda: 5)  # a clock that does not move
    got = [clock.take() for _ in range(3)]
    assert got == [1005, 1006, 1007]


def test_the_ceiling_keeps_the_offset_within_a_boot_and_raises_it_after_a_reboot(tmp_path):
    now = [10 * 10**9]
    first = Ceiling(str(tmp_path), clock_ns=lambda: now[0], boot="boot-a")
    assert first.offset == 0 and first.keep()
    assert first.ceiling == now[0] + AHEAD_NS
    now[0] += AHEAD_NS // 4
    assert not first.keep()  # far enough ahead still
    now[0] += AHEAD_NS // 2
    assert first.keep()
    issued = first.now()
    # a restart in the same boot: the clock kept counting, the offset stays
    again = Ceiling(str(tmp_path), clock_ns=lambda: now[0] + 5, boot="boot-a")
    assert again.offset == 0
    # after a reboot the clock starts near zero: stamps must still be above every issued one
    rebooted = Ceiling(str(tmp_path), clock_ns=lambda: 1, boot="boot-b")
    assert rebooted.now() > issued
    saved = json.loads((tmp_path / "stamps.json").read_text())
    assert saved["boot"] == "boot-a" and saved["ceiling"] == first.ceiling


def test_a_producer_never_takes_a_stamp_past_the_ceiling_on_disk(tmp_path):
    now = [50 * 10**9]
    path = str(tmp_path / "stamps.json")
    clock = StampClock(7, clock_ns=lambda: now[0], ceiling_path=path)
    assert clock.blocked() == ""  # no file: nothing to hold to
    supervisor = Ceiling(str(tmp_path), clock_ns=lambda: now[0] + 7, boot="b")
    supervisor.keep()
    first = supervisor.ceiling
    assert clock.blocked() == "" and clock.bound == first
    saved = (tmp_path / "stamps.json").read_text()
    (tmp_path / "stamps.json").write_text(json.dumps({"ceiling": 1}))
    now[0] = first - 7 - 2 * MARGIN_NS
    assert clock.blocked() == ""  # the bound read is kept until the clock reaches it: no read per call
    (tmp_path / "stamps.json").write_text(saved)
    now[0] = first - 7 - MARGIN_NS // 2  # the supervisor was stopped: the ceiling on disk did not move
    assert "ceiling" in clock.blocked() and "stopped" in clock.blocked()
    assert clock.take() < first  # (a stamp taken anyway would still be below it: the margin)
    assert supervisor.keep()  # it runs again and moves the ceiling ahead
    assert clock.blocked() == "" and clock.bound == supervisor.ceiling > first


def test_format_3_records_carry_kinds_and_stamps(tmp_path):
    path = str(tmp_path / "x.log")
    w = WalWriter(path, "never")
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4)
    w.append("alpha", np.array([1, 2, 3], np.uint64), vecs, np.array([7, 8, 9], np.uint64), OBSERVE)
    w.append("alpha", np.array([2], np.uint64), None, np.array([10], np.uint64), FORGET)
    w.close()
    got = []
    stats = replay(path, lambda s, i, v, st, k: got.append((s, i.tolist(), v.copy(), st.tolist(), k)),
                   with_ops=True)
    assert stats.records == 2 and not stats.skipped
    assert got[0][:2] == ("alpha", [1, 2, 3]) and got[0][3:] == ([7, 8, 9], OBSERVE)
    assert np.array_equal(got[0][2], vecs)
    assert got[1][1] == [2] and got[1][2].shape == (1, 0) and got[1][3:] == ([10], FORGET)
    # the three-argument form still reads them
    plain = []
    replay(path, lambda s, i, v: plain.append(i.tolist()))
    assert plain == [[1, 2, 3], [2]]


def test_a_row_with_nothing_kept_is_padded_and_the_merge_drops_the_padding():
    from engine.ledger.book import keep_rows
    from engine.producer.recall import merge
    ids = np.array([[1, 2], [3, 4], [5, 6]], np.uint64)
    dist = np.array([[.1, .2], [.3, .4], [.5, .6]], np.float32)
    ok = np.array([[True, True], [False, False], [False, True]])
    kept_ids, kept_dist = keep_rows(ids, dist, ok)
    assert kept_ids.shape == (3, 2) and kept_ids[0].tolist() == [1, 2] and kept_ids[2, 0] == 6
    assert np.isinf(kept_dist[1]).all() and np.isinf(kept_dist[2, 1])
    other = (np.array([[7], [8], [9]], np.uint64), np.array([[.05], [.35], [.7]], np.float32))
    got_ids, got_dist = merge([(kept_ids, kept_dist), other], 3, 2)
    # row 1 lost both of its entries, not the other rows theirs; width: the narrowest row
    assert got_ids.tolist() == [[7], [8], [6]] and np.isfinite(got_dist).all()
    assert merge([(kept_ids, kept_dist), other], 3, 1)[0].tolist() == [[7], [8], [6]]
