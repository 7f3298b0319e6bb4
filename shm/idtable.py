"""A hash table in shared memory from (space, id) to (stamp, holder).

Mechanism only: what a stamp or a holder means is the engine's
(``engine.ledger``). Open addressing with linear probing over a power-of-two
number of entries, structure of arrays so that a batch of keys is looked up
or applied with numpy, not one key at a time.

Layout, from ``offset`` 0 of its segment (every array 64-byte aligned)::

    off  size       field
    0    8          capacity C   u64  creator, once (a power of two)
    8    8          slots S      u64  creator, once
    16   8          spaces M     u64  creator, once
    24   8          used         u64  occupied entries; writers, under the lock
    32   8          version      u64  even at rest, odd while entries move
                                      (``remove``); writers, under the lock
    40   8          dirty        u64  1 while a writer changes entries or
                                      counts; writers, under the lock
    48   16         reserved
    64   8*S*M      held   i8[S, M]  live keys per (holder slot, space); writers,
                                      under the lock
    ..   8*S        floors u64[S]    per slot, a stamp its owner publishes
                                      (single writer: the process of that slot);
                                      0 until it first does
    ..   4*C        key    u32[C]    0 empty, else space + 1
    ..   4*C        holder i32[C]    >= 0 live, held by that slot;
                                      < 0 removed by slot -holder - 1
    ..   8*C        ids    u64[C]
    ..   8*C        stamps u64[C]

Concurrency contract: ``apply`` and ``remove`` run holding byte ``lock_index``
of a ``shm.lock.LockFile`` (kernel-released, so a writer killed inside leaves
the lock free; what it half-wrote is re-applied by whoever re-runs the same
operation, see ``apply``). Readers (``find``, ``holders``) take no lock: an
entry is filled before its key is published (stores are ordered on x86, and
the numpy columns are written one after another), and an entry is updated
with one aligned store per column. Only ``remove`` moves entries (backward
shift), so it makes ``version`` odd around the move and a reader that saw
the version change looks again.

A writer killed inside ``apply`` leaves entries half updated, which the
re-run of its operation completes, and ``held``/``used`` off by what it had
not counted yet, which a re-run cannot tell. So a writer sets ``dirty``
before it changes anything and clears it after; the next writer that finds
it set counts ``held`` and ``used`` again from the entries (``_recount``,
one pass over the table) before its own change.

The mapping is untrusted: the header is checked against what the attacher
expects, and probing is bounded by the capacity.
"""

from __future__ import annotations

import time

import numpy as np

from shm.errors import LayoutError
from shm.lock import LockFile

HEADER_BYTES = 64
ABSENT = np.iinfo(np.int32).min  # ``holders`` of a key the table does not hold
NO_FLOOR = np.iinfo(np.uint64).max
_K1_INT = 0x9E3779B97F4A7C15
_K1 = np.uint64(_K1_INT)
_K2_INT = 0xC2B2AE3D27D4EB4F
_U64 = (1 << 64) - 1


class TableFull(LayoutError):
    """The table has no free entry left for a new key."""


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


def table_bytes(capacity: int, slots: int, spaces: int) -> int:
    n = HEADER_BYTES + _align(8 * slots * spaces) + _align(8 * slots)
    return n + _align(4 * capacity) * 2 + _align(8 * capacity) * 2


def capacity_for(keys: int) -> int:
    """The power of two that holds ``keys`` at a load of at most 3/4."""
    c = 64
    while c * 3 // 4 < keys:
        c *= 2
    return c


class IdTable:
    def __init__(self, buf, capacity: int, slots: int, spaces: int, lock: LockFile, lock_index: int,
                 init: bool = False, lock_timeout: float | None = None):
        if capacity & (capacity - 1) or capacity < 2:
            raise LayoutError(f"identity table capacity {capacity} is not a power of two")
        if len(buf) < table_bytes(capacity, slots, spaces):
            raise LayoutError("segment too small for the identity table")
        self.capacity, self.slots, self.spaces = capacity, slots, spaces
        self.mask = np.uint64(capacity - 1)
        self.shift = np.uint64(64 - capacity.bit_length() + 1)
        self._lock, self._lock_index, self.lock_timeout = lock, lock_index, lock_timeout
        self._hdr = np.frombuffer(buf, np.uint64, 8, 0)
        o = HEADER_BYTES
        self.held = np.frombuffer(buf, np.int64, slots * spaces, o).reshape(slots, spaces)
        o += _align(8 * slots * spaces)
        self.floors = np.frombuffer(buf, np.uint64, slots, o)
        o += _align(8 * slots)
        self.key = np.frombuffer(buf, np.uint32, capacity, o)
        o += _align(4 * capacity)
        self.holder = np.frombuffer(buf, np.int32, capacity, o)
        o += _align(4 * capacity)
        self.ids = np.frombuffer(buf, np.uint64, capacity, o)
        o += _align(8 * capacity)
        self.stamps = np.frombuffer(buf, np.uint64, capacity, o)
        if init:
            self._hdr[:] = 0
            self._hdr[0], self._hdr[1], self._hdr[2] = capacity, slots, spaces
            self.held[:] = 0
            self.floors[:] = 0
        elif (int(self._hdr[0]), int(self._hdr[1]), int(self._hdr[2])) != (capacity, slots, spaces):
            raise LayoutError(f"identity table header says capacity={int(self._hdr[0])} slots={int(self._hdr[1])} "
                              f"spaces={int(self._hdr[2])}, expected {capacity}/{slots}/{spaces}")

    # -- reads (no lock) ---------------------------------------------------------
    @property
    def used(self) -> int:
        return int(self._hdr[3])

    def _home(self, space: int, ids: np.ndarray) -> np.ndarray:
        h = (ids.astype(np.uint64) * _K1) ^ np.uint64((space + 1) * _K2_INT & _U64)
        return ((h * _K1) >> self.shift).astype(np.int64)

    def _probe(self, space: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position of each key or -1, the first empty position met where absent)."""
        n = len(ids)
        found = np.full(n, -1, np.int64)
        empty = np.full(n, -1, np.int64)
        if n == 0:
            return found, empty
        want = np.uint32(space + 1)
        pos = self._home(space, ids)
        active = np.arange(n)
        mask = int(self.mask)
        for _ in range(self.capacity):
            p = pos[active]
            k = self.key[p]
            hit = (k == want) & (self.ids[p] == ids[active])
            free = k == 0
            found[active[hit]] = p[hit]
            empty[active[free]] = p[free]
            more = ~(hit | free)
            active = active[more]
            if not len(active):
                return found, empty
            pos[active] = (p[more] + 1) & mask
        raise TableFull(f"identity table: no empty entry left in {self.capacity}")

    def find(self, space: int, ids: np.ndarray) -> np.ndarray:
        """Position of each (space, id), -1 where absent; consistent with a
        concurrent ``remove`` (looked at again if entries moved meanwhile)."""
        ids = np.ascontiguousarray(ids, np.uint64)
        for _ in range(1000):
            v = int(self._hdr[4])
            if v & 1:
                time.sleep(0.0001)
                continue
            found, _ = self._probe(space, ids)
            if int(self._hdr[4]) == v:
                return found
        with self._lock.hold(self._lock_index, self.lock_timeout):
            return self._probe(space, ids)[0]

    def holders(self, space: int, ids: np.ndarray) -> np.ndarray:
        """The holder of each (space, id), ``ABSENT`` where the table has none."""
        return self.entries(space, ids)[0]

    def entries(self, space: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(holder, stamp) of each (space, id): ``ABSENT`` and 0 where the table
        has none. The two are read one column after the other: an entry being
        applied meanwhile may show its new stamp with its old holder."""
        pos = self.find(space, ids)
        holders = np.full(len(pos), ABSENT, np.int32)
        stamps = np.zeros(len(pos), np.uint64)
        hit = pos >= 0
        holders[hit] = self.holder[pos[hit]]
        stamps[hit] = self.stamps[pos[hit]]
        return holders, stamps

    # -- writes (under the lock) -------------------------------------------------
    def apply(self, space: int, ids: np.ndarray, stamps: np.ndarray, holder: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """Set (stamp, holder) of each key whose entry is absent or not newer:
        a stamp equal to the entry's applies again (the same operation re-run
        after its writer died). Keys must be unique within the call.

        Returns (applied mask, previous holder of each key or ``ABSENT``).
        ``held`` follows: -1 for a live previous holder, +1 for a live new one."""
        if not 0 <= space < self.spaces or not -self.slots <= holder < self.slots:
            raise LayoutError(f"identity table: space {space} or holder {holder} out of range")
        ids = np.ascontiguousarray(ids, np.uint64)
        stamps = np.ascontiguousarray(stamps, np.uint64)
        with self._lock.hold(self._lock_index, self.lock_timeout):
            self._begin()
            found, empty = self._probe(space, ids)
            prev = np.full(len(ids), ABSENT, np.int32)
            have = found >= 0
            prev[have] = self.holder[found[have]]
            win = ~have
            win[have] = stamps[have] >= self.stamps[found[have]]
            upd = found[have & win]
            self.stamps[upd] = stamps[have & win]
            self.holder[upd] = holder
            new = np.flatnonzero(~have)
            if len(new):
                self._insert(space, ids[new], stamps[new], holder, empty[new])
            gone = prev[win]
            gone = gone[gone >= 0]
            if len(gone):
                np.subtract.at(self.held[:, space], gone, 1)
            if holder >= 0:
                self.held[holder, space] += int(win.sum())
            self._hdr[5] = np.uint64(0)
            return win, prev

    def _begin(self) -> None:
        """Mark a change under way (lock held), first putting right the counts
        of a writer that died inside one."""
        if int(self._hdr[5]):
            self._recount()
        self._hdr[5] = np.uint64(1)

    def _recount(self) -> None:
        """``held`` and ``used`` from the entries themselves (lock held)."""
        occupied = self.key != 0
        live = occupied & (self.holder >= 0)
        flat = self.holder[live].astype(np.int64) * self.spaces + self.key[live].astype(np.int64) - 1
        self.held[:] = np.bincount(flat, minlength=self.slots * self.spaces).reshape(self.slots, self.spaces)
        self._hdr[3] = np.uint64(int(occupied.sum()))

    def _insert(self, space: int, ids: np.ndarray, stamps: np.ndarray, holder: int, at: np.ndarray) -> None:
        """Fill empty entries (lock held); keys that met the same empty entry
        take turns: the first gets it, the others probe on."""
        if self.used + len(ids) >= self.capacity:
            raise TableFull(f"identity table full: {self.used} of {self.capacity} entries used")
        while len(ids):
            _, first = np.unique(at, return_index=True)
            take = np.zeros(len(ids), bool)
            take[first] = True
            p = at[take]
            self.stamps[p] = stamps[take]
            self.holder[p] = holder
            self.ids[p] = ids[take]
            self.key[p] = space + 1  # published last
            self._hdr[3] += np.uint64(int(take.sum()))
            ids, stamps = ids[~take], stamps[~take]
            if len(ids):
                _, at = self._probe(space, ids)

    def remove(self, positions: np.ndarray, floor: int | None = None) -> int:
        """Empty the entries at ``positions`` that hold a removed key (holder
        negative; with ``floor``, also a stamp below it): a live key is never
        dropped. Returns how many. Backward shift keeps every other key
        reachable without markers; positions are taken highest first, and one
        whose entry a shift moved meanwhile is left for a later call."""
        n = 0
        mask = self.capacity - 1
        key, holder, stamps = self.key, self.holder, self.stamps
        with self._lock.hold(self._lock_index, self.lock_timeout):
            self._begin()
            self._hdr[4] += np.uint64(1)  # odd: entries move
            try:
                for p in sorted((int(x) for x in positions if 0 <= x < self.capacity), reverse=True):
                    if not key[p] or holder[p] >= 0 or (floor is not None and int(stamps[p]) >= floor):
                        continue
                    self._shift_out(p, mask)
                    n += 1
                self._hdr[3] -= np.uint64(n)
            finally:
                self._hdr[4] += np.uint64(1)
            self._hdr[5] = np.uint64(0)
        return n

    def _home_of(self, space_key: int, ident: int) -> int:
        """``_home`` of one key, in Python integers (no numpy call per entry)."""
        h = ((ident * _K1_INT) & _U64) ^ (space_key * _K2_INT & _U64)
        return ((h * _K1_INT) & _U64) >> int(self.shift)

    def _shift_out(self, i: int, mask: int) -> None:
        key, ids = self.key, self.ids
        j = i
        while True:
            j = (j + 1) & mask
            k = int(key[j])
            if not k:
                break
            home = self._home_of(k, int(ids[j]))
            stays = (i < home <= j) if i <= j else (home > i or home <= j)
            if not stays:
                self.stamps[i], self.holder[i], ids[i] = self.stamps[j], self.holder[j], ids[j]
                key[i] = k
                i = j
        key[i] = 0

    def removed_below(self, floor: int, start: int, count: int) -> tuple[np.ndarray, int]:
        """Positions in [start, start+count) of removed keys with a stamp below
        ``floor`` (no lock: ``remove`` checks again), and where to look next."""
        end = min(self.capacity, start + count)
        sl = slice(start, end)
        hit = np.flatnonzero((self.key[sl] != 0) & (self.holder[sl] < 0) & (self.stamps[sl] < np.uint64(floor)))
        return hit + start, 0 if end >= self.capacity else end

    def rows_of(self, slot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(space, id, stamp, holder) of every key held or removed by ``slot``
        (a copy, read without the lock unless entries keep moving: a snapshot's
        view, see ``engine.storage.ledgerfile``)."""
        for _ in range(100):
            v = int(self._hdr[4])
            if v & 1:
                time.sleep(0.0005)
                continue
            rows = self._rows_of(slot)
            if int(self._hdr[4]) == v:
                return rows
        with self._lock.hold(self._lock_index, self.lock_timeout):
            return self._rows_of(slot)

    def _rows_of(self, slot: int):
        sel = np.flatnonzero((self.key != 0) & ((self.holder == slot) | (self.holder == -slot - 1)))
        key, ids, stamps, holder = self.key[sel], self.ids[sel], self.stamps[sel], self.holder[sel]
        ok = (key != 0) & ((holder == slot) | (holder == -slot - 1))  # changed between the reads: left out
        return (key[ok] - 1).astype(np.uint32), ids[ok], stamps[ok], holder[ok]
