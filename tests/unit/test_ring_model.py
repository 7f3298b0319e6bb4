"""Stateful test of ``shm.ring.Ring`` against a pure-Python reference model.

Hypothesis drives a random sequence of enqueue / claim / claim_many / commit
(in any order) / reassign / claims_of / scan / re-attach on a small ring
(capacity 1..17, claim table 1..6 entries, so wrap-around, a full ring, an
empty ring and a full claim table all come up), and after every step checks:

* counters: ``tail <= claimed <= head``, ``head - tail <= capacity``, and
  depth/queued equal to the model;
* every record between ``tail`` and ``head`` (pending or in flight, committed
  or not) still holds exactly what was enqueued at its position: id, vector,
  space and time. So a slot is never reused before ``tail`` passes it;
* every open claim is contiguous (``start % capacity + count <= capacity``)
  and its ``view`` returns exactly the model's records;
* exactly-once: every accepted id is handed out in one claim only, and after
  a final drain the committed ids equal the accepted ids;
* guard bytes before and after the ring are never written.

Ids are a counter, so each is unique, and the enqueue "clock" is injected.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from shm.errors import LayoutError
from shm.lock import LockFile
from shm.ring import Claim, Ring, ring_bytes

GUARD = 0xA5
TAIL_GUARD_BYTES = 64
CLAIMERS = st.integers(0, 3)
SPACES = st.integers(0, 3)


def vectors_for(ids: np.ndarray, dim: int) -> np.ndarray:
    """Distinct, exactly representable vectors derived from the ids."""
    ids = np.asarray(ids, dtype=np.float64)
    return (ids[:, None] * 4.0 + np.arange(dim, dtype=np.float64)[None, :]).astype(np.float32)


class Record:
    __slots__ = ("id", "space", "time", "vector")

    def __init__(self, id_: int, space: int, time: float, vector: np.ndarray):
        self.id, self.space, self.time, self.vector = id_, space, time, vector


class Entry:
    """Model of one used claim-table entry."""

    __slots__ = ("claim", "state")

    def __init__(self, claim: Claim):
        self.claim = claim
        self.state = "claimed"


class RingMachine(RuleBasedStateMachine):
    def __init__(self, lock: LockFile, stats: Counter):
        super().__init__()
        self.lock = lock
        self.stats = stats
        self.ring: Ring | None = None

    # -- setup ------------------------------------------------------------
    @initialize(capacity=st.integers(1, 17), dim=st.integers(1, 3), claim_slots=st.integers(1, 6),
                lead_lines=st.integers(0, 2), lock_index=st.integers(0, 3))
    def setup(self, capacity, dim, claim_slots, lead_lines, lock_index):
        self.capacity, self.dim, self.claim_slots = capacity, dim, claim_slots
        self.offset = 64 * lead_lines
        self.ring_end = self.offset + ring_bytes(capacity, dim, claim_slots)
        self.buf = bytearray([GUARD]) * (self.ring_end + TAIL_GUARD_BYTES)
        self.lock_index = lock_index
        self.ring = Ring(memoryview(self.buf), self.offset, capacity, dim, claim_slots,
                         self.lock, lock_index, ring_id=5, init=True)
        # model
        self.head = self.claimed = self.tail = 0
        self.records: dict[int, Record] = {}          # position -> record, for [tail, head)
        self.entries: dict[int, Entry] = {}           # used claim-table entries
        self.stale: list[Claim] = []                  # claims already committed
        self.next_id = 1
        self.clock = 0
        self.accepted: Counter = Counter()
        self.delivered: Counter = Counter()
        self.committed: Counter = Counter()

    # -- helpers ----------------------------------------------------------
    def free_entries(self) -> int:
        return self.claim_slots - len(self.entries)

    def open_claims(self) -> list[Claim]:
        return [e.claim for _, e in sorted(self.entries.items()) if e.state == "claimed"]

    def check_view(self, claim: Claim) -> list[int]:
        ids, spaces, times, vecs = self.ring.view(claim)
        assert len(ids) == len(spaces) == len(times) == len(vecs) == claim.count
        for i in range(claim.count):
            rec = self.records[claim.start + i]
            assert int(ids[i]) == rec.id, (claim, i)
            assert int(spaces[i]) == rec.space, (claim, i)
            assert float(times[i]) == rec.time, (claim, i)
            assert np.array_equal(vecs[i], rec.vector), (claim, i)
        return [int(x) for x in ids]

    def expected_claims(self, total: int, per_claim: int, max_claims: int) -> list[tuple[int, int]]:
        """(start, count) of the claims the spec says are handed out: as many as
        free entries (and ``max_claims``) allow, each at most ``per_claim``,
        together at most ``total``, never wrapping."""
        out, claimed = [], self.claimed
        if total <= 0 or per_claim <= 0:
            return out
        for _ in range(min(self.free_entries(), max_claims)):
            pending = self.head - claimed
            if pending <= 0 or total <= 0:
                break
            n = min(pending, per_claim, total, self.capacity - claimed % self.capacity)
            out.append((claimed, n))
            claimed += n
            total -= n
        return out

    def take(self, got: list[Claim], claimer: int, total: int, per_claim: int,
             max_claims: int | None = None) -> None:
        limit = self.claim_slots if max_claims is None else max_claims
        expected = self.expected_claims(total, per_claim, limit)
        assert [(c.start, c.count) for c in got] == expected
        entries = [c.entry for c in got]
        assert len(set(entries)) == len(entries)
        for c in got:
            assert 0 <= c.entry < self.claim_slots and c.entry not in self.entries, c
            assert c.claimer == claimer and c.ring == 5
            assert c.start % self.capacity + c.count <= self.capacity, "claim wraps"
            for i in self.check_view(c):
                self.delivered[i] += 1
            self.entries[c.entry] = Entry(c)
            if c.start % self.capacity + c.count == self.capacity and c.start + c.count < self.head:
                self.stats["claim_cut_at_wrap"] += 1  # more was pending past the ring's end
        self.claimed += sum(c.count for c in got)
        if not got and self.head > self.claimed and min(total, per_claim, limit) > 0:
            assert self.free_entries() == 0
            self.stats["claim_table_full"] += 1
        if not got and self.head == self.claimed:
            self.stats["claim_empty"] += 1
        if len(got) > 1:
            self.stats["multi_claim"] += 1

    def advance_tail(self) -> None:
        moved = True
        while moved:
            moved = False
            for e, entry in list(self.entries.items()):
                if entry.state == "committed" and entry.claim.start == self.tail:
                    for p in range(self.tail, self.tail + entry.claim.count):
                        del self.records[p]
                    self.tail += entry.claim.count
                    del self.entries[e]
                    moved = True

    # -- rules ------------------------------------------------------------
    @precondition(lambda self: self.ring is not None)
    @rule(data=st.data(), space=SPACES)
    def enqueue(self, data, space):
        n = data.draw(st.integers(0, self.capacity + 3), label="batch")
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.uint64)
        self.next_id += n
        vecs = vectors_for(ids, self.dim)
        self.clock += 1
        now = 1000.0 + self.clock * 0.5
        written = self.ring.enqueue(ids, vecs, space, now)
        assert written == max(0, min(n, self.capacity - (self.head - self.tail)))
        for i in range(written):
            self.records[self.head + i] = Record(int(ids[i]), space, now, vecs[i].copy())
            self.accepted[int(ids[i])] += 1
        if written < n:
            self.stats["ring_full"] += 1
        if self.head + written > self.capacity and written:
            self.stats["wrapped"] += 1
        if written and (self.head % self.capacity) + written > self.capacity:
            self.stats["enqueue_split_at_wrap"] += 1
        self.head += written

    @precondition(lambda self: self.ring is not None)
    @rule(data=st.data(), claimer=CLAIMERS)
    def claim(self, data, claimer):
        max_items = data.draw(st.integers(-1, self.capacity + 2), label="max_items")
        got = self.ring.claim(max_items, claimer)
        # ``claim`` hands out at most one claim: what it returns is all it took.
        if got is None:
            self.take([], claimer, max_items, max_items, max_claims=1)
        else:
            assert isinstance(got, Claim)
            self.take([got], claimer, max_items, max_items, max_claims=1)
        assert self.ring.claimed == self.claimed, (
            f"claim({max_items}) returned {got} but moved 'claimed' to {self.ring.claimed}: "
            f"it took records that no returned Claim covers")

    @precondition(lambda self: self.ring is not None)
    @rule(data=st.data(), claimer=CLAIMERS)
    def claim_many(self, data, claimer):
        total = data.draw(st.integers(-1, 2 * self.capacity + 2), label="total")
        per_claim = data.draw(st.integers(-1, self.capacity + 1), label="per_claim")
        max_claims = data.draw(st.none() | st.integers(0, self.claim_slots + 1), label="max_claims")
        if max_claims is None and data.draw(st.booleans(), label="omit max_claims"):
            got = self.ring.claim_many(total, per_claim, claimer)
        else:
            got = self.ring.claim_many(total, per_claim, claimer, max_claims=max_claims)
        assert isinstance(got, list)
        self.take(got, claimer, total, per_claim, max_claims)
        assert self.ring.claimed == self.claimed

    @precondition(lambda self: self.ring is not None and self.open_claims())
    @rule(pick=st.integers(0, 63))
    def commit(self, pick):
        opened = self.open_claims()
        claim = opened[pick % len(opened)]
        if claim.start != self.tail:
            self.stats["commit_out_of_order"] += 1
        for i in self.check_view(claim):
            self.committed[i] += 1
        self.ring.commit(claim)
        self.entries[claim.entry].state = "committed"
        self.stale.append(claim)
        del self.stale[:-8]
        self.advance_tail()

    @precondition(lambda self: self.ring is not None and self.stale)
    @rule(pick=st.integers(0, 7))
    def commit_again_is_refused(self, pick):
        claim = self.stale[pick % len(self.stale)]
        with pytest.raises(LayoutError):
            self.ring.commit(claim)
        self.stats["double_commit"] += 1

    @precondition(lambda self: self.ring is not None)
    @rule(old=CLAIMERS, new=CLAIMERS)
    def reassign(self, old, new):
        got = self.ring.reassign(old, new)
        expected = [c for c in self.open_claims() if c.claimer == old]
        assert sorted((c.entry, c.start, c.count) for c in got) == \
            sorted((c.entry, c.start, c.count) for c in expected)
        for c in got:
            assert c.claimer == new and c.ring == 5
            self.entries[c.entry].claim = c
        if got and old != new:
            self.stats["reassigned"] += 1

    @precondition(lambda self: self.ring is not None)
    @rule(claimer=CLAIMERS)
    def claims_of(self, claimer):
        got = self.ring.claims_of(claimer)
        expected = [c for c in self.open_claims() if c.claimer == claimer]
        assert sorted((c.entry, c.start, c.count, c.claimer) for c in got) == \
            sorted((c.entry, c.start, c.count, c.claimer) for c in expected)
        for c in got:
            self.check_view(c)

    @precondition(lambda self: self.ring is not None)
    @rule(space=SPACES)
    def scan(self, space):
        ids, vecs = self.ring.scan(space)[:2]
        want = [self.records[p] for p in range(self.tail, self.head) if self.records[p].space == space]
        assert [int(x) for x in ids] == [r.id for r in want]
        assert vecs.shape == (len(want), self.dim)
        for got_vec, r in zip(vecs, want):
            assert np.array_equal(got_vec, r.vector)
        # copies, not views into the ring
        assert not np.shares_memory(ids, self.ring.ids)
        assert not np.shares_memory(vecs, self.ring.vectors)

    @precondition(lambda self: self.ring is not None)
    @rule()
    def reattach(self):
        """A replacement process attaches to the same bytes without init."""
        self.ring = Ring(memoryview(self.buf), self.offset, self.capacity, self.dim,
                         self.claim_slots, self.lock, self.lock_index, ring_id=5)

    # -- invariants --------------------------------------------------------
    @invariant()
    def consistent(self):
        if self.ring is None:
            return
        r = self.ring
        assert r.tail <= r.claimed <= r.head
        assert r.head - r.tail <= self.capacity
        assert (r.head, r.claimed, r.tail) == (self.head, self.claimed, self.tail)
        assert r.depth() == self.head - self.claimed
        assert r.queued() == self.head - self.tail
        assert r.open_claimers() == {c.claimer for c in self.open_claims()}
        # No pending / in-flight / committed-but-not-passed record was overwritten.
        assert sorted(self.records) == list(range(self.tail, self.head))
        for p, rec in self.records.items():
            s = p % self.capacity
            assert int(r.ids[s]) == rec.id, p
            assert int(r.spaces[s]) == rec.space, p
            assert float(r.times[s]) == rec.time, p
            assert np.array_equal(r.vectors[s], rec.vector), p
        for entry in self.entries.values():
            c = entry.claim
            assert c.start % self.capacity + c.count <= self.capacity
            if entry.state == "claimed":
                self.check_view(c)
        # Exactly once so far.
        assert all(v == 1 for v in self.delivered.values())
        assert all(v == 1 for v in self.committed.values())
        assert not (self.committed - self.delivered)
        assert not (self.delivered - self.accepted)
        # Nothing written outside the ring's bytes.
        assert all(b == GUARD for b in self.buf[:self.offset])
        assert all(b == GUARD for b in self.buf[self.ring_end:])

    def teardown(self):
        if self.ring is None:
            return
        if (self.ring.head, self.ring.claimed, self.ring.tail) != (self.head, self.claimed, self.tail):
            return  # a step already failed (the invariant runs after every step); keep its report
        # Drain: commit everything open, claim what is pending, until empty.
        for _ in range(4 * (self.capacity + self.claim_slots) + 4):
            for c in self.open_claims():
                for i in self.check_view(c):
                    self.committed[i] += 1
                self.ring.commit(c)
                self.entries[c.entry].state = "committed"
                self.advance_tail()
            if self.head == self.claimed:
                break
            self.take(self.ring.claim_many(self.capacity, self.capacity, 9), 9,
                      self.capacity, self.capacity)
        assert (self.ring.head, self.ring.claimed, self.ring.tail) == (self.head,) * 3
        assert self.ring.queued() == 0 and self.ring.depth() == 0
        assert self.ring.open_claimers() == set()
        assert self.committed == self.accepted
        assert self.delivered == self.accepted
        self.stats["runs"] += 1


def test_ring_matches_model(tmp_path):
    lock = LockFile(str(tmp_path / "ring.lock"))
    stats: Counter = Counter()
    try:
        run_state_machine_as_test(
            lambda: RingMachine(lock, stats),
            settings=settings(max_examples=300, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow]))
    finally:
        # LockFile has no close(); the descriptor is private. One per test.
        os.close(lock._fd)
    # The run must actually have reached the edges it is meant to test.
    for edge in ("wrapped", "ring_full", "claim_table_full", "claim_empty", "commit_out_of_order",
                 "claim_cut_at_wrap", "enqueue_split_at_wrap", "multi_claim", "double_commit",
                 "reassigned"):
        assert stats[edge] > 0, f"edge {edge!r} never reached: {dict(stats)}"
