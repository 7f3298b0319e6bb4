"""The ring's publish journal and the gateway's session table: exactly-once
sequence numbers when the writer dies at any point of an enqueue."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from engine.control.sessions import S_ACCEPTED, S_NEXT_SEQ, SessionTable
from engine.errors import TableFull
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
    row = table.open(space=0, lane=1)
    n = ring.enqueue(*batch(5), 0, 1.0, journal=(row, 1), on_publish=lambda k: table.advance(row, 1, k))
    assert n == 5 and table.next_seq(row) == 6 and table.rows[row, S_ACCEPTED] == 5
    assert ring.take_journal() is None and table.repair([ring]) == 0


def test_writer_killed_after_publish_is_completed_by_repair(shared):
    ring, table, mem = shared
    row = table.open(space=0, lane=1)
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
    row = table.open(space=0, lane=1)
    # what a writer that died after opening the journal, before publishing, leaves
    journal_words(mem)[:] = (J_OPEN, 0, 3, row, 1)
    assert ring.enqueue(*batch(3, 50), 0, 1.0) == 3  # the next writer reuses the positions
    assert ring.head == 3
    assert table.repair([ring]) == 0 and table.next_seq(row) == 1


def test_repair_is_idempotent_when_the_session_was_already_advanced(shared):
    ring, table, mem = shared
    row = table.open(space=0, lane=1)
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
    rows = [table.open(space=i, lane=0) for i in range(4)]
    ids = [table.session_id(r) for r in rows]
    assert len(set(ids)) == 4 and all(i > 0 for i in ids)
    assert [table.find(i) for i in ids] == rows and table.find(12345) is None and table.find(0) is None
    with pytest.raises(TableFull, match="max-sessions"):
        table.open(space=0, lane=0)
    table.close(rows[1])
    assert table.count() == 3 and table.find(ids[1]) is None
    table.rows[rows[2], 4] -= 10_000  # last message 10 s ago
    assert table.idle(5.0) == [rows[2]]
    assert table.idle(5.0, keep={rows[2]}) == []
    table.advance(rows[0], 1, 10)
    table.advance(rows[0], 5, 3)  # an older range: no change
    assert table.rows[rows[0], S_NEXT_SEQ] == 11 and table.rows[rows[0], S_ACCEPTED] == 10
