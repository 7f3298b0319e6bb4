"""Reading a ring's queued records without consuming them (``Ring`` mixes this in).

For a dead run's carry-over and a stop's spill (``uncommitted``), fresh
recall (``scan``), a forget's ``not_found`` count (``queued_ops``) and the
tombstone floor (``pending_floor``). Each copies out what it returns;
layout and locking: ``shm.ring``.
"""

from __future__ import annotations

import numpy as np


class RingReads:
    """Needs: the ring's lock, counters and columns (``shm.ring.Ring``)."""

    def pending_floor(self) -> int | None:
        """The smallest stamp among records not yet committed, None if none
        (no lock: counters may be stale; the caller allows for records being
        published meanwhile)."""
        head, tail = int(self._hdr[0]), int(self._hdr[2])
        if not 0 < head - tail <= self.capacity:
            return None
        a, b = tail % self.capacity, head % self.capacity
        parts = [self.stamps[a:b]] if a < b else [self.stamps[a:], self.stamps[:b]]
        return int(min(int(x.min()) for x in parts if len(x)))

    def uncommitted(self) -> tuple[np.ndarray, np.ndarray]:
        """Records not yet committed, as (slot index of each, claimer of each or
        -1 if never claimed). Records of claims already committed (waiting only
        for ``tail`` to pass) are left out. For carrying over a dead run."""
        with self._lock.hold(self._lock_index, self.lock_timeout):
            head, claimed, tail = self._counters()
            n = head - tail
            owner = np.full(n, -1, np.int64)
            keep = np.ones(n, bool)
            keep[: claimed - tail] = False  # claimed range: kept only where an open claim covers it
            for e in self._open_entries():
                start, count, claimer = (int(x) for x in self._claims[e, :3])
                lo, hi = max(start, tail) - tail, min(start + count, claimed) - tail
                if lo < hi:
                    owner[lo:hi], keep[lo:hi] = claimer, True
            slots = (np.arange(tail, head, dtype=np.uint64) % np.uint64(self.capacity)).astype(np.int64)
            return slots[keep], owner[keep]

    def queued_ops(self, space: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (ids, stamps, kinds) of the uncommitted records of ``space`` (no vectors)."""
        with self._lock.hold(self._lock_index, self.lock_timeout):
            head, _, tail = self._counters()
            slots = np.arange(tail, head, dtype=np.uint64) % np.uint64(self.capacity)
            sel = slots[self.spaces[slots] == space]
            return self.ids[sel], self.stamps[sel], self.kinds[sel]

    def scan(self, space: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (ids, vectors, stamps, kinds) of every uncommitted record of ``space``."""
        with self._lock.hold(self._lock_index, self.lock_timeout):
            head, _, tail = self._counters()
            slots = np.arange(tail, head, dtype=np.uint64) % np.uint64(self.capacity)
            sel = slots[self.spaces[slots] == space]
            return self.ids[sel], self.vectors[sel], self.stamps[sel], self.kinds[sel]
