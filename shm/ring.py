"""A multi-producer, multi-consumer ring of fixed-size records with claim/commit.

Positions are 64-bit counters that only grow; the slot of position ``p`` is
``p % capacity``. Three counters split the ring::

    tail ........ claimed ........ head
    |  claimed,   |  pending       |  free ...
    |  in flight  |  (queued)      |

* ``enqueue`` writes at ``head`` (one copy from the caller's arrays).
* ``claim`` hands out ``[claimed, claimed+n)`` to one consumer and records it
  in the claim table; a claim never wraps, so its records are contiguous and
  can be handed to hnswlib as numpy views without a copy.
* ``commit`` marks a claim done; ``tail`` then advances over every committed
  claim in order. Slots are reused only once ``tail`` has passed them, so a
  consumer that dies between claim and commit leaves its records intact: its
  claims stay in the table, and ``claims_of``/``reassign`` let a replacement
  process them again (DESIGN §4, claim/commit).

Reading queued records without consuming them (fresh recall, carry-over,
spill, forget's ``not_found``, the tombstone floor): ``shm.ringreads``.

Layout of one ring inside a segment, starting at ``offset`` (64-byte aligned)::

    off  size            field
    0    8               head      u64   producers, under the ring lock
    8    8               claimed   u64   consumers, under the ring lock
    16   8               tail      u64   consumers, under the ring lock
    24   8               capacity  u64   creator, once (C)
    32   8               dim       u64   creator, once (D)
    40   8               claim_slots u64 creator, once (K)
    48   16              reserved
    64   40              publish journal (``enqueue(journal=...)``):
                           state u64 (0 none, 1 open, 2 published,
                           3 aborted), old_head u64, new_head u64,
                           tag_a u64, tag_b u64
    104  24              reserved
    128  32*K            claim table: K entries of
                           start u64, count u64, claimer i64, state i64
                           (state 0 free, 1 claimed, 2 committed)
    ...  8*C  (align 64) ids       u64[C]
    ...  4*C  (align 64) space     u32[C]
    ...  8*C  (align 64) enq_time  f64[C]   enqueue time, as the producer passes it
                                           (the engine's: time.monotonic(), one
                                           clock for every process of the host)
    ...  4*C*D (align 64) vectors  f32[C, D]
    ...  8*C  (align 64) stamps    u64[C]   the operation's stamp (its order
                                           among operations on one key;
                                           engine.ledger), as the producer passes it
    ...  1*C  (align 64) kinds     u8[C]    0 observe, 1 forget (a forget's
                                           vector row is not written nor read)

Concurrency contract: every mutation happens under the ring's byte lock in a
``shm.lock.LockFile`` (kernel-released on death). ``depth``/``queued`` read
counters without the lock and may be slightly stale; they are for decisions
that are re-checked under the lock. The mapping is untrusted: counters and
claim entries are bounds-checked and a violation raises ``LayoutError``.
Every locked operation waits at most ``lock_timeout`` (set per role by the
engine) and then raises ``shm.errors.LockTimeout``, having changed nothing.

Publish journal: a producer that must record, atomically with the records,
that it published them (the gateway's session sequence numbers) passes
``journal=(tag_a, tag_b)`` and ``on_publish``. Under the lock it writes the
journal *open* with the head it is about to publish, publishes, runs
``on_publish`` and clears the journal. A later lock holder that finds the
journal still open knows its writer died inside that window and settles it
before ``head`` can move again: *published* if ``head`` equals the journal's
``new_head``, else *aborted*. ``take_journal`` hands a settled journal to
whoever repairs the tagged state, and clears it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shm.errors import LayoutError
from shm.lock import LockFile
from shm.ringreads import RingReads

HEADER_BYTES = 128
CLAIM_BYTES = 32
FREE, CLAIMED, COMMITTED = 0, 1, 2
J_NONE, J_OPEN, J_PUBLISHED, J_ABORTED = 0, 1, 2, 3


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


def ring_bytes(capacity: int, dim: int, claim_slots: int) -> int:
    """Bytes one ring occupies (a multiple of 64)."""
    n = HEADER_BYTES + CLAIM_BYTES * claim_slots
    n = _align(n) + _align(8 * capacity)
    n += _align(4 * capacity)
    n += _align(8 * capacity)
    n += _align(4 * capacity * dim)
    n += _align(8 * capacity)
    n += _align(capacity)
    return n


@dataclass(frozen=True)
class Claim:
    """A contiguous range of records owned by one consumer until commit."""

    ring: int
    entry: int
    start: int
    count: int
    claimer: int


class Ring(RingReads):
    def __init__(self, buf, offset: int, capacity: int, dim: int, claim_slots: int,
                 lock: LockFile, lock_index: int, ring_id: int = 0, init: bool = False,
                 lock_timeout: float | None = None):
        if offset % 64:
            raise LayoutError(f"ring offset {offset} is not 64-byte aligned")
        if len(buf) < offset + ring_bytes(capacity, dim, claim_slots):
            raise LayoutError("segment too small for ring")
        self.capacity = capacity
        self.dim = dim
        self.claim_slots = claim_slots
        self.ring_id = ring_id
        self._lock = lock
        self._lock_index = lock_index
        # How long an operation waits for the ring lock before raising
        # LockTimeout (None: forever). A producer stopped (SIGSTOP) while it
        # holds the lock must not freeze its consumers: each role sets its own.
        self.lock_timeout = lock_timeout
        self._hdr = np.frombuffer(buf, np.uint64, 8, offset)
        self._journal = np.frombuffer(buf, np.uint64, 5, offset + 64)
        self._claims = np.frombuffer(buf, np.int64, 4 * claim_slots, offset + HEADER_BYTES).reshape(
            claim_slots, 4)
        o = _align(offset + HEADER_BYTES + CLAIM_BYTES * claim_slots)
        self.ids = np.frombuffer(buf, np.uint64, capacity, o)
        o += _align(8 * capacity)
        self.spaces = np.frombuffer(buf, np.uint32, capacity, o)
        o += _align(4 * capacity)
        self.times = np.frombuffer(buf, np.float64, capacity, o)
        o += _align(8 * capacity)
        self.vectors = np.frombuffer(buf, np.float32, capacity * dim, o).reshape(capacity, dim)
        o += _align(4 * capacity * dim)
        self.stamps = np.frombuffer(buf, np.uint64, capacity, o)
        o += _align(8 * capacity)
        self.kinds = np.frombuffer(buf, np.uint8, capacity, o)
        if init:
            self._hdr[:] = 0
            self._hdr[3] = capacity
            self._hdr[4] = dim
            self._hdr[5] = claim_slots
            self._journal[:] = 0
            self._claims[:] = 0
        elif (int(self._hdr[3]), int(self._hdr[4]), int(self._hdr[5])) != (capacity, dim, claim_slots):
            raise LayoutError(
                f"ring {ring_id}: header says capacity={int(self._hdr[3])} dim={int(self._hdr[4])} "
                f"claim_slots={int(self._hdr[5])}, expected {capacity}/{dim}/{claim_slots}")

    # -- lock-free reads (possibly stale) ---------------------------------
    @property
    def head(self) -> int:
        return int(self._hdr[0])

    @property
    def claimed(self) -> int:
        return int(self._hdr[1])

    @property
    def tail(self) -> int:
        return int(self._hdr[2])

    def depth(self) -> int:
        """Pending records (enqueued, not yet claimed)."""
        return max(0, int(self._hdr[0]) - int(self._hdr[1]))

    def queued(self) -> int:
        """Records not yet committed (pending + in flight)."""
        return max(0, int(self._hdr[0]) - int(self._hdr[2]))

    # -- locked operations -------------------------------------------------
    def _counters(self) -> tuple[int, int, int]:
        head, claimed, tail = int(self._hdr[0]), int(self._hdr[1]), int(self._hdr[2])
        if not (tail <= claimed <= head and head - tail <= self.capacity):
            raise LayoutError(
                f"ring {self.ring_id}: corrupt counters head={head} claimed={claimed} tail={tail}")
        return head, claimed, tail

    def enqueue(self, ids: np.ndarray, vectors: np.ndarray | None, space: int, now: float,
                stamps: np.ndarray | None = None, kind: int = 0,
                journal: tuple[int, int] | None = None, on_publish=None) -> int:
        """Append as many leading records as fit; returns how many were written.
        ``stamps``: one per record (None: all 0, for the ring's own tests;
        the engine always passes them); ``kind``: of every record
        (``vectors`` None for a kind that has none).

        With ``journal=(tag_a, tag_b)``, ``on_publish(n)`` runs under the lock
        right after the records are published, inside the journal's open
        window (see the module docstring)."""
        n = len(ids)
        with self._lock.hold(self._lock_index, self.lock_timeout):
            self._settle_journal()
            head, _, tail = self._counters()
            n = min(n, self.capacity - (head - tail))
            if n <= 0:
                return 0
            done = 0
            while done < n:
                slot = (head + done) % self.capacity
                m = min(n - done, self.capacity - slot)
                self.ids[slot:slot + m] = ids[done:done + m]
                self.spaces[slot:slot + m] = space
                self.times[slot:slot + m] = now
                self.stamps[slot:slot + m] = 0 if stamps is None else stamps[done:done + m]
                self.kinds[slot:slot + m] = kind
                if vectors is not None:
                    self.vectors[slot:slot + m] = vectors[done:done + m]
                done += m
            if journal is not None:
                self._journal[1:] = (head, head + n, journal[0], journal[1])
                self._journal[0] = J_OPEN
            # Publish after the data (the lock release is the fence).
            self._hdr[0] = head + n
            if journal is not None:
                if on_publish is not None:
                    on_publish(n)
                self._journal[0] = J_NONE
        return n

    def _settle_journal(self) -> None:
        """Decide a journal left open by a writer that died (lock held)."""
        if int(self._journal[0]) == J_OPEN:
            published = int(self._hdr[0]) == int(self._journal[2])
            self._journal[0] = J_PUBLISHED if published else J_ABORTED

    def take_journal(self) -> tuple[bool, int, int, int] | None:
        """A journal its writer did not close, settled and cleared:
        (published, records published, tag_a, tag_b), or None."""
        with self._lock.hold(self._lock_index, self.lock_timeout):
            self._settle_journal()
            state = int(self._journal[0])
            if state == J_NONE:
                return None
            old_head, new_head, a, b = (int(x) for x in self._journal[1:])
            self._journal[0] = J_NONE
            if state not in (J_PUBLISHED, J_ABORTED) or not 0 <= new_head - old_head <= self.capacity:
                raise LayoutError(f"ring {self.ring_id}: corrupt publish journal state={state} "
                                  f"old_head={old_head} new_head={new_head}")
            published = state == J_PUBLISHED
            return published, (new_head - old_head) if published else 0, a, b

    def claim(self, max_items: int, claimer: int) -> Claim | None:
        """Claim up to ``max_items`` pending records (never wrapping)."""
        claims = self.claim_many(max_items, max_items, claimer, max_claims=1)
        return claims[0] if claims else None

    def claim_many(self, total: int, per_claim: int, claimer: int,
                   max_claims: int | None = None) -> list[Claim]:
        """Claim up to ``total`` records as at most ``max_claims`` claims of at
        most ``per_claim`` records each (a claim also ends at the ring's end)."""
        out: list[Claim] = []
        if total <= 0 or per_claim <= 0:
            return out
        with self._lock.hold(self._lock_index, self.lock_timeout):
            head, claimed, _ = self._counters()
            free_entries = np.flatnonzero(self._claims[:, 3] == FREE)[:max_claims]
            for entry in free_entries:
                pending = head - claimed
                if pending <= 0 or total <= 0:
                    break
                slot = claimed % self.capacity
                n = min(pending, per_claim, total, self.capacity - slot)
                self._claims[entry] = (claimed, n, claimer, CLAIMED)
                out.append(Claim(self.ring_id, int(entry), claimed, n, claimer))
                claimed += n
                total -= n
            self._hdr[1] = claimed
        return out

    def commit(self, claim: Claim) -> None:
        """Mark a claim processed; advance ``tail`` over committed claims in order."""
        if not 0 <= claim.entry < self.claim_slots:
            raise LayoutError(f"ring {self.ring_id}: claim entry {claim.entry} out of range")
        with self._lock.hold(self._lock_index, self.lock_timeout):
            row = self._claims[claim.entry]
            if int(row[3]) != CLAIMED or int(row[0]) != claim.start:
                raise LayoutError(f"ring {self.ring_id}: commit of a claim not held: {claim}")
            row[3] = COMMITTED
            self._advance_tail()

    def _advance_tail(self) -> None:
        """Move ``tail`` over committed claims that start at it, in order.

        The chain is checked before anything is written: a corrupt entry
        (count out of range, running past ``claimed``, or covering a claim
        still in flight) raises ``LayoutError`` and leaves the ring as it was,
        so no in-flight record ever becomes overwritable.
        """
        _, claimed, tail = self._counters()
        table = self._claims
        open_starts = table[table[:, 3] == CLAIMED, 0]
        chain = []
        new_tail = tail
        while True:
            hit = np.flatnonzero((table[:, 3] == COMMITTED) & (table[:, 0] == new_tail))
            if len(hit) == 0:
                break
            e = int(hit[0])
            count = int(table[e, 1])
            end = new_tail + count
            if not 0 < count <= self.capacity or end > claimed or \
                    ((open_starts >= new_tail) & (open_starts < end)).any():
                raise LayoutError(f"ring {self.ring_id}: corrupt committed claim entry {e}: "
                                  f"start={new_tail} count={count} (claimed={claimed})")
            chain.append(e)
            new_tail = end
        for e in chain:
            table[e] = 0
        self._hdr[2] = new_tail

    def claims_of(self, claimer: int) -> list[Claim]:
        """Open claims recorded for ``claimer`` (e.g. left by a dead process)."""
        with self._lock.hold(self._lock_index, self.lock_timeout):
            head, claimed, tail = self._counters()
            out = []
            for e in self._open_entries(claimer):
                start, count = int(self._claims[e, 0]), int(self._claims[e, 1])
                if not (tail <= start and start + count <= claimed and count <= self.capacity):
                    raise LayoutError(f"ring {self.ring_id}: claim entry {e} out of range")
                out.append(Claim(self.ring_id, int(e), start, count, claimer))
            return out

    def _open_entries(self, claimer: int | None = None) -> np.ndarray:
        """Claim-table entries in state CLAIMED (of ``claimer`` only, if given)."""
        open_ = self._claims[:, 3] == CLAIMED
        if claimer is not None:
            open_ &= self._claims[:, 2] == claimer
        return np.flatnonzero(open_)

    def open_claimers(self) -> set[int]:
        """Claimer ids that hold open claims on this ring."""
        rows = self._claims[self._claims[:, 3] == CLAIMED]
        return {int(c) for c in rows[:, 2]}

    def reassign(self, old: int, new: int, keep: int | None = None) -> list[Claim]:
        """Hand every open claim of ``old`` to ``new``, except one covering
        position ``keep``; returns the claims handed over."""
        with self._lock.hold(self._lock_index, self.lock_timeout):
            out = []
            for e in self._open_entries(old):
                start, count = int(self._claims[e, 0]), int(self._claims[e, 1])
                if keep is not None and start <= keep < start + count:
                    continue
                self._claims[e, 2] = new
                out.append(Claim(self.ring_id, int(e), int(self._claims[e, 0]),
                                 int(self._claims[e, 1]), new))
            return out

    def view(self, claim: Claim) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Zero-copy views (ids, spaces, times, vectors) of a claim's records."""
        s = claim.start % self.capacity
        if claim.count <= 0 or s + claim.count > self.capacity:
            raise LayoutError(f"ring {self.ring_id}: claim {claim} does not fit the ring")
        e = s + claim.count
        return self.ids[s:e], self.spaces[s:e], self.times[s:e], self.vectors[s:e]

    def view_ops(self, claim: Claim) -> tuple[np.ndarray, np.ndarray]:
        """Zero-copy views (kinds, stamps) of a claim's records (after ``view``)."""
        s = claim.start % self.capacity
        return self.kinds[s:s + claim.count], self.stamps[s:s + claim.count]
