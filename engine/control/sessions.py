"""The gateway's session table, in the control block so it outlives a gateway.

A session is a stream of batches for one space and priority whose
observations are numbered 1, 2, 3, ... (DESIGN §2). The table lives in
shared memory (``inst.session_rows``, i64[--max-sessions, 8]); only the
gateway writes it, so a gateway killed at any moment leaves it for the next
gateway, and a client that reconnects resumes its session where the engine
really is.

A row names its space by a key (a 63-bit hash of the name), not by a space
index: opening a session registers nothing, so sessions without data use up
no ``--max-spaces`` (the space is registered when a batch is accepted).

Row layout (one row per session, all i64)::

    S_ID           session id (random, 63 bits); 0 = free row
    S_SPACE_KEY    ``space_key`` of the session's space name (checked on resume)
    S_LANE         lane index (priority)
    S_NEXT_SEQ     the sequence number the session expects next
    S_LAST_MS      unix ms of the session's last message (idle expiry)
    S_ACCEPTED     observations accepted so far
    S_CREATED_MS   unix ms the session was opened
    S_RESERVED

Exactly once across a gateway crash: a batch is queued into one ring with
the ring's publish journal tagged (session row, first sequence); the row's
S_NEXT_SEQ is advanced under the same ring lock, inside the journal's window
(``shm.ring``). A gateway that died inside that window leaves the journal
open; ``repair`` (run by the next gateway before it serves anything) applies
every journal a ring settled as published. So S_NEXT_SEQ counts exactly the
observations that reached a ring, and a client resending a batch after a
reconnect gets ``duplicate`` for what already went in.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import numpy as np

from engine.errors import TableFull

S_ID, S_SPACE_KEY, S_LANE, S_NEXT_SEQ, S_LAST_MS, S_ACCEPTED, S_CREATED_MS, S_RESERVED = range(8)


def now_ms() -> int:
    return int(time.time() * 1000)


def space_key(name: str) -> int:
    """A stable 63-bit key of a space name (the same in every process and run)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SessionTable:
    def __init__(self, rows: np.ndarray):
        self.rows = rows  # i64[max_sessions, 8]; written by the gateway only

    @property
    def capacity(self) -> int:
        return len(self.rows)

    def open(self, space_key: int, lane: int) -> int:
        """A new session row; raises TableFull."""
        free = np.flatnonzero(self.rows[:, S_ID] == 0)
        if len(free) == 0:
            raise TableFull(f"all {self.capacity} sessions are in use (--max-sessions)")
        i = int(free[0])
        t = now_ms()
        row = self.rows[i]
        row[S_SPACE_KEY], row[S_LANE], row[S_NEXT_SEQ], row[S_ACCEPTED] = space_key, lane, 1, 0
        row[S_LAST_MS], row[S_CREATED_MS] = t, t
        row[S_ID] = secrets.randbits(63) or 1  # last: the row is in use from here
        return i

    def adopt(self, session_id: int, space_key: int, lane: int, next_seq: int) -> int:
        """A row for a session another host's gateway opened (cluster mode: the
        client resumes it here), continuing from ``next_seq``; raises TableFull."""
        i = self.open(space_key, lane)
        self.rows[i, S_NEXT_SEQ] = max(1, next_seq)
        self.rows[i, S_ID] = session_id  # the id the client holds, not the random one
        return i

    def catch_up(self, i: int, next_seq: int) -> None:
        """Move the session's next number forward to ``next_seq`` (cluster mode:
        batches up to there were acknowledged through another gateway). Never
        back, and not counted in S_ACCEPTED: this gateway accepted none of them."""
        if next_seq > self.rows[i, S_NEXT_SEQ]:
            self.rows[i, S_NEXT_SEQ] = next_seq

    def find(self, session_id: int) -> int | None:
        if session_id <= 0:
            return None
        hit = np.flatnonzero(self.rows[:, S_ID] == session_id)
        return int(hit[0]) if len(hit) else None

    def session_id(self, i: int) -> int:
        return int(self.rows[i, S_ID])

    def next_seq(self, i: int) -> int:
        return int(self.rows[i, S_NEXT_SEQ])

    def advance(self, i: int, first: int, n: int) -> None:
        """``n`` observations from ``first`` reached a ring (called under its lock)."""
        row = self.rows[i]
        end = first + n
        if end > row[S_NEXT_SEQ]:
            row[S_ACCEPTED] += end - row[S_NEXT_SEQ]
            row[S_NEXT_SEQ] = end

    def touch(self, i: int) -> None:
        self.rows[i, S_LAST_MS] = now_ms()

    def close(self, i: int) -> None:
        self.rows[i, S_ID] = 0  # first: the row is free from here
        self.rows[i, 1:] = 0

    def count(self) -> int:
        return int(np.count_nonzero(self.rows[:, S_ID]))

    def oldest(self, skip: set[int] = frozenset()) -> int | None:
        """The row in use whose last message is the oldest, except ``skip``; None if none."""
        rows = [int(i) for i in np.flatnonzero(self.rows[:, S_ID] != 0) if int(i) not in skip]
        return min(rows, key=lambda i: (int(self.rows[i, S_LAST_MS]), i)) if rows else None

    def last_ms(self, i: int) -> int:
        return int(self.rows[i, S_LAST_MS])

    def idle(self, timeout_s: float, keep: set[int] = frozenset()) -> list[int]:
        """Rows whose last message is older than ``timeout_s`` (except ``keep``)."""
        cutoff = now_ms() - int(timeout_s * 1000)
        rows = np.flatnonzero((self.rows[:, S_ID] != 0) & (self.rows[:, S_LAST_MS] < cutoff))
        return [int(i) for i in rows if int(i) not in keep]

    def repair(self, rings) -> int:
        """Apply the publish journals a dead gateway left open; returns how
        many advanced a session."""
        applied = 0
        for ring in rings:
            got = ring.take_journal()
            if got is None:
                continue
            published, n, row, first = got
            if published and n and 0 <= row < self.capacity and self.rows[row, S_ID] != 0:
                self.advance(row, first, n)
                applied += 1
        return applied
