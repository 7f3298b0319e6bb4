"""The ring's publish journal and the gateway's session table: exactly-once
sequence numbers when the writer dies at any point of an enqueue."""

from __future__ import annotations

import hashlib
import mmap
import os

import numpy as np
import pytest

from engine.control.sessions import S_ACCEPTED, S_LAST_MS, S_NEXT_SEQ, SessionTable, space_key
from engine.errors import TableFull
from engine.gateway.eviction import Evictions
from shm.errors import LayoutError
from shm.lock import LockFile
from shm.ring import J_OPEN, Ring, ring_bytes

CAP, DIM = 16, 2


@pytest.fixture
def shared(tmp_path):
    """A ring and a session table in MAP_SHARED memory, visible to a forked child."""
    size = ring_bytes(CAP, DIM, 4)
    mem = mmap.mmap(-1, size + 4 * 64)
    lock = LockFile(str(tmp_path / "locks"))
    ring = Ring(memoryview(mem), 0, CAP, DIM, 4, lock, 0, init=True)
    table = SessionTable(np.frombuffer(mem, np.int64, 4 * 8, size).reshape(4, 8))
    try:
        yield ring, table, mem
    finally:
        os.close(lock._fd)


def batch(n: int, first: int = 0):
    ids = np.arange(first, first + n, dtype=np.uint64)
    return ids, np.ones((n, DIM), np.float32)


def journal_words(mem) -> np.ndarray:
    """state, old_head, new_head, tag_a, tag_b: offset 64 of the ring, as documented in shm/ring.py."""
    return np.frombuffer(mem, np.uint64, 5, 64)


def test_a_live_journaled_enqueue_leaves_nothing_behind(shared):
    ring, table, mem = shared
    row = table.open(space_key=0, lane=1)
    n = ring.enqueue(*batch(5), 0, 1.0, journal=(row, 1), on_publish=lambda k: table.advance(row, 1, k))
    assert n == 5 and table.next_seq(row) == 6 and table.rows[row, S_ACCEPTED] == 5
    assert ring.take_journal() is None and table.repair([ring]) == 0


def test_writer_killed_after_publish_is_completed_by_repair(shared):
    ring, table, mem = shared
    row = table.open(space_key=0, lane=1)
    pid = os.fork()
    if pid == 0:  # dies between publishing the records and advancing the session
        ring.enqueue(*batch(4), 0, 1.0, journal=(row, 1), on_publish=lambda k: os._exit(9))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9
    assert ring.head == 4 and table.next_seq(row) == 1  # in the ring, not yet in the session
    # another producer enqueues first: it settles the journal but must not lose it
    assert ring.enqueue(*batch(2, 100), 0, 1.0) == 2
    assert table.repair([ring]) == 1
    assert table.next_seq(row) == 5 and table.rows[row, S_ACCEPTED] == 4
    assert table.repair([ring]) == 0  # taken once


def test_writer_killed_before_publish_advances_nothing(shared):
    ring, table, mem = shared
    row = table.open(space_key=0, lane=1)
    # what a writer that died after opening the journal, before publishing, leaves
    journal_words(mem)[:] = (J_OPEN, 0, 3, row, 1)
    assert ring.enqueue(*batch(3, 50), 0, 1.0) == 3  # the next writer reuses the positions
    assert ring.head == 3
    assert table.repair([ring]) == 0 and table.next_seq(row) == 1


def test_repair_is_idempotent_when_the_session_was_already_advanced(shared):
    ring, table, mem = shared
    row = table.open(space_key=0, lane=1)
    pid = os.fork()
    if pid == 0:  # advanced the session, died before clearing the journal
        def advance_then_die(k):
            table.advance(row, 1, k)
            os._exit(9)
        ring.enqueue(*batch(6), 0, 1.0, journal=(row, 1), on_publish=advance_then_die)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.next_seq(row) == 7
    assert table.repair([ring]) == 1
    assert table.next_seq(row) == 7 and table.rows[row, S_ACCEPTED] == 6


def test_corrupt_journal_is_refused(shared):
    ring, table, mem = shared
    journal_words(mem)[:] = (2, 0, 10_000, 0, 1)  # published, but more records than the ring holds
    with pytest.raises(LayoutError, match="journal"):
        ring.take_journal()


def test_session_table_open_find_close_idle_and_cap(shared):
    _, table, _ = shared
    rows = [table.open(space_key=i, lane=0) for i in range(4)]
    ids = [table.session_id(r) for r in rows]
    assert len(set(ids)) == 4 and all(i > 0 for i in ids)
    assert [table.find(i) for i in ids] == rows and table.find(12345) is None and table.find(0) is None
    with pytest.raises(TableFull, match="max-sessions"):
        table.open(space_key=0, lane=0)
    table.close(rows[1])
    assert table.count() == 3 and table.find(ids[1]) is None
    table.rows[rows[2], 4] -= 10_000  # last message 10 s ago
    assert table.idle(5.0) == [rows[2]]
    assert table.idle(5.0, keep={rows[2]}) == []
    table.advance(rows[0], 1, 10)
    table.advance(rows[0], 5, 3)  # an older range: no change
    assert table.rows[rows[0], S_NEXT_SEQ] == 11 and table.rows[rows[0], S_ACCEPTED] == 10


def test_cluster_adoption_keeps_the_clients_id_and_number_and_never_moves_back():
    table = SessionTable(np.zeros((2, 8), np.int64))
    row = table.adopt(123456789, space_key("abc"), 1, 41)
    assert table.find(123456789) == row and table.next_seq(row) == 41
    assert int(table.rows[row, S_ACCEPTED]) == 0  # accepted through another gateway, not this one
    table.catch_up(row, 30)
    assert table.next_seq(row) == 41
    table.catch_up(row, 60)
    assert table.next_seq(row) == 60 and int(table.rows[row, S_ACCEPTED]) == 0
    table.advance(row, 60, 5)
    assert table.next_seq(row) == 65 and int(table.rows[row, S_ACCEPTED]) == 5
    assert table.next_seq(table.adopt(7, space_key("abc"), 1, 0)) == 1  # numbers start at 1
    with pytest.raises(TableFull):
        table.adopt(8, space_key("abc"), 1, 1)


def test_space_key_is_stable_positive_and_tells_names_apart():
    keys = {name: space_key(name) for name in ("default", "a" * 64, "a" * 63, "space-1", "space-2")}
    assert len(set(keys.values())) == len(keys)
    assert all(0 < k < 2 ** 63 for k in keys.values())
    assert space_key("default") == space_key("default")
    # part of the shared-memory contract: the same in every process (no per-process hash seed)
    assert space_key("default") == int.from_bytes(hashlib.blake2b(b"default", digest_size=8).digest(),
                                                  "little") >> 1


def test_a_full_table_evicts_the_longest_idle_session_without_a_stream():
    table = SessionTable(np.zeros((4, 8), np.int64))
    now = 1_000_000_000
    ev = Evictions(table, idle_timeout_s=300, clock=lambda: now)
    rows = [table.open(space_key=i, lane=0) for i in range(4)]
    ids = [table.session_id(r) for r in rows]
    for r, age_s in zip(rows, (50, 400, 200, 10)):  # seconds since each session's last message
        table.rows[r, S_LAST_MS] = now - age_s * 1000
    # rows[1] is the oldest, but a stream serves it: rows[2] goes
    assert ev.make_room(attached={rows[1]}) == (ids[2], 200.0)
    assert table.find(ids[2]) is None and table.count() == 3
    assert table.open(space_key=9, lane=0) == rows[2]  # the freed row
    assert "was evicted" in ev.not_found(ids[2]) and "max-sessions=4" in ev.not_found(ids[2])
    assert "unknown or expired" in ev.not_found(12345)
    # every session has a stream: nothing is evicted, and the refusal says what to do
    assert ev.make_room(attached=set(rows)) is None and table.count() == 4
    text = ev.full()
    assert "--max-sessions=4" in text and "close sessions" in text and "Close" in text
    assert "retry in 0 s" in text  # rows[1] is already past the idle timeout: expires at the next tick
    table.rows[rows[1], S_LAST_MS] = now
    table.rows[rows[0], S_LAST_MS] = now - 100_000
    assert "retry in 200 s" in ev.full()


def test_evicted_ids_are_remembered_up_to_a_bound(monkeypatch):
    import engine.gateway.eviction as eviction
    monkeypatch.setattr(eviction, "REMEMBERED", 3)
    table = SessionTable(np.zeros((1, 8), np.int64))
    ev = Evictions(table, 300)
    gone = []
    for i in range(5):
        table.open(space_key=i, lane=0)
        gone.append(ev.make_room(attached=set())[0])
    assert [("was evicted" in ev.not_found(s)) for s in gone] == [False, False, True, True, True]
