"""The identity table (shm.idtable) against a dict model, in a plain buffer."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

from shm import idtable
from shm.errors import LayoutError
from shm.idtable import ABSENT, IdTable, TableFull, table_bytes
from shm.lock import LockFile


def make(tmp_path, capacity=256, slots=2, spaces=4, buf=None):
    buf = bytearray(table_bytes(capacity, slots, spaces)) if buf is None else buf
    return IdTable(buf, capacity, slots, spaces, LockFile.open(str(tmp_path / "locks")), 2, init=True), buf


def u64(values):
    return np.asarray(values, np.uint64)


def test_newer_or_equal_stamp_applies_and_older_loses(tmp_path):
    t, _ = make(tmp_path)
    won, prev = t.apply(1, u64([10, 11]), u64([5, 5]), 0)
    assert won.tolist() == [True, True] and prev.tolist() == [ABSENT, ABSENT]
    won, prev = t.apply(1, u64([10, 11]), u64([4, 5]), 1)  # 10: older loses; 11: equal applies again
    assert won.tolist() == [False, True] and prev.tolist() == [0, 0]
    assert t.holders(1, u64([10, 11, 12])).tolist() == [0, 1, ABSENT]
    assert t.held[:, 1].tolist() == [1, 1] and t.used == 2
    won, _ = t.apply(1, u64([10]), u64([9]), -2)  # a tombstone written by slot 1
    assert won.tolist() == [True] and t.holders(1, u64([10])).tolist() == [-2]
    assert t.held[:, 1].tolist() == [0, 1]
    holders, stamps = t.entries(1, u64([10, 11, 12]))
    assert holders.tolist() == [-2, 1, ABSENT] and stamps.tolist() == [9, 5, 0]
    # the same id in another space is another key
    assert t.holders(2, u64([10, 11])).tolist() == [ABSENT, ABSENT]


def test_many_keys_match_a_model_through_inserts_and_removals(tmp_path):
    rng = np.random.default_rng(7)
    t, _ = make(tmp_path, capacity=4096)
    model: dict[tuple[int, int], tuple[int, int]] = {}
    stamp = 0
    for round_ in range(40):
        space = int(rng.integers(0, 4))
        ids = np.unique(rng.integers(0, 1500, 60).astype(np.uint64))
        stamp += 1
        holder = int(rng.choice([0, 1, -1, -2]))
        t.apply(space, ids, np.full(len(ids), stamp, np.uint64), holder)
        for i in ids.tolist():
            model[(space, i)] = (stamp, holder)
        if round_ % 5 == 4:  # drop the tombstones below a floor
            floor = stamp - 2
            pos, _ = t.removed_below(floor, 0, t.capacity)
            t.remove(pos)
            model = {k: v for k, v in model.items() if not (v[1] < 0 and v[0] < floor)}
        assert t.used == len(model)
    for space in range(4):
        keys = [i for (s, i) in model if s == space]
        got = t.holders(space, u64(keys))
        assert got.tolist() == [model[(space, i)][1] for i in keys]
    live = np.zeros((2, 4), np.int64)
    for (s, _), (_, h) in model.items():
        if h >= 0:
            live[h, s] += 1
    assert (t.held == live).all()


def test_remove_never_drops_a_live_key(tmp_path):
    t, _ = make(tmp_path)
    t.apply(0, u64([1, 2]), u64([1, 1]), 0)
    t.apply(0, u64([2]), u64([2]), -1)
    assert t.remove(t.find(0, u64([1, 2]))) == 1
    assert t.holders(0, u64([1, 2])).tolist() == [0, ABSENT]


def test_full_table_refuses_new_keys(tmp_path):
    t, _ = make(tmp_path, capacity=64)
    t.apply(0, np.arange(63, dtype=np.uint64), np.ones(63, np.uint64), 0)
    with pytest.raises(TableFull):
        t.apply(0, u64([1000, 1001]), u64([1, 1]), 0)
    # a known key still updates
    assert t.apply(0, u64([5]), u64([2]), 1)[0].tolist() == [True]


def test_rows_of_a_slot(tmp_path):
    t, _ = make(tmp_path)
    t.apply(3, u64([7, 8]), u64([4, 4]), 1)
    t.apply(3, u64([9]), u64([6]), -2)
    t.apply(3, u64([10]), u64([6]), 0)
    space, ids, stamps, holder = t.rows_of(1)
    order = np.argsort(ids)
    assert ids[order].tolist() == [7, 8, 9] and holder[order].tolist() == [1, 1, -2]
    assert space.tolist() == [3, 3, 3] and stamps[order].tolist() == [4, 4, 6]


def test_attach_checks_the_header(tmp_path):
    t, buf = make(tmp_path)
    with pytest.raises(LayoutError):
        IdTable(buf, 512, 2, 4, LockFile.open(str(tmp_path / "locks")), 2)
    with pytest.raises(LayoutError):
        IdTable(buf, 100, 2, 4, LockFile.open(str(tmp_path / "locks")), 2)
    with pytest.raises(LayoutError):
        t.apply(9, u64([1]), u64([1]), 0)  # space out of range


def test_layout_table_in_the_docstring(tmp_path):
    """The documented offsets are where the arrays are."""
    C, S, M = 128, 3, 5
    t, buf = make(tmp_path, C, S, M)
    doc = textwrap.dedent(idtable.__doc__)
    base = np.frombuffer(buf, np.uint8).ctypes.data
    names = {"held": t.held, "floors": t.floors, "key": t.key, "holder": t.holder, "ids": t.ids,
             "stamps": t.stamps}
    rows = re.findall(r"^\s*(\d+|\.\.)\s+(\S+)\s+(\w+)", doc, re.M)
    documented = [name for _, _, name in rows if name in names]
    assert documented == list(names)
    end = 64
    for _, size, name in rows:
        if name not in names:
            continue
        arr = names[name]
        at = arr.ctypes.data - base
        assert at == (end + 63) // 64 * 64, name
        assert arr.nbytes == eval(size, {"__builtins__": {}}, {"S": S, "M": M, "C": C}), name
        end = at + arr.nbytes
    assert (end + 63) // 64 * 64 == table_bytes(C, S, M)


def test_a_writer_that_died_inside_apply_leaves_counts_the_next_writer_puts_right(tmp_path):
    """What a writer killed between updating entries and counting them leaves:
    entries changed, ``held`` not, ``dirty`` set. The re-run of its operation
    cannot tell; the next writer recounts from the entries."""
    t, _ = make(tmp_path)
    t.apply(1, u64([10, 11, 12]), u64([5, 5, 5]), 0)
    assert t.held[:, 1].tolist() == [3, 0] and int(t._hdr[5]) == 0
    # slot 1 dies applying newer observes of 10 and 11: holders moved, counts not
    pos = t.find(1, u64([10, 11]))
    t._hdr[5] = 1
    t.stamps[pos], t.holder[pos] = 9, 1
    # its re-run (the same operation) and any other writer now see right counts
    won, _ = t.apply(1, u64([10, 11]), u64([9, 9]), 1)
    assert won.tolist() == [True, True]
    assert t.held[:, 1].tolist() == [1, 2] and t.used == 3 and int(t._hdr[5]) == 0
    t._hdr[5] = 1
    t.held[0, 1] = 77  # whatever a death left
    t.apply(2, u64([50]), u64([1]), 0)
    assert t.held[:, 1].tolist() == [1, 2] and t.held[:, 2].tolist() == [1, 0] and t.used == 4
