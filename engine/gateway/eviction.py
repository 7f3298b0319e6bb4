"""Making room in a full session table, and what a refused client is told.

A stream that ends without ``Close`` leaves its session in the table for a
resume until ``--session-idle-timeout`` (DESIGN §2: sessions survive a lost
connection). Clients that open streams and abandon them would otherwise
fill the table and lock every new client out for that whole timeout. So
when the table is full, a new session takes the row of the session that no
stream serves (detached) and whose last message is the oldest: that is the
one least likely to be resumed. Sessions with a live stream are never
evicted; when every session has one, the client is refused with what it
can do about it.

A client that later resumes an evicted session is told so (``NOT_FOUND``,
see ``not_found``); the gateway remembers the ids of the last
``REMEMBERED`` evicted sessions for that (in memory only: after a gateway
restart the answer is the plain "unknown or expired").

Not thread-safe: the gateway calls it under its session-table lock.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.control.sessions import SessionTable, now_ms

REMEMBERED = 4096


class Evictions:
    def __init__(self, table: SessionTable, idle_timeout_s: float, clock=now_ms):
        self.table = table
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock  # unix ms, as the table's S_LAST_MS
        self.recent: OrderedDict[int, None] = OrderedDict()

    def make_room(self, attached: set[int]) -> tuple[int, float] | None:
        """Close the oldest detached session; returns (its session id, seconds
        since its last message), or None when every session has a stream."""
        row = self.table.oldest(skip=attached)
        if row is None:
            return None
        session_id = self.table.session_id(row)
        idle_s = max(0.0, (self.clock() - self.table.last_ms(row)) / 1000.0)
        self.table.close(row)
        self.recent[session_id] = None
        while len(self.recent) > REMEMBERED:
            self.recent.popitem(last=False)
        return session_id, idle_s

    def full(self) -> str:
        """The refusal when every session has a stream: what the client can do."""
        n = self.table.capacity
        row = self.table.oldest()
        wait = self.idle_timeout_s
        if row is not None:
            wait = max(0.0, self.table.last_ms(row) / 1000.0 + self.idle_timeout_s - self.clock() / 1000.0)
        return (f"all {n} sessions (--max-sessions={n}) have an open stream; close sessions you no longer "
                f"use (send Close, or end their streams), start the engine with a larger --max-sessions, "
                f"or retry in {wait:.0f} s, when the longest-idle session expires (--session-idle-timeout)")

    def not_found(self, session_id: int) -> str:
        """The answer to a resume of a session the table does not hold."""
        if session_id in self.recent:
            n = self.table.capacity
            return (f"session {session_id} was evicted: the session table was full (--max-sessions={n}) "
                    f"and it was the longest-idle session without an open stream; open a new session "
                    f"(what it had accepted is kept)")
        return f"session {session_id} is unknown or expired; open a new one"
