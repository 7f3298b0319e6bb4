"""The rule for applying operations to the identity table (``shm.idtable``).

Per (space, id) the table keeps the stamp of the newest operation applied
and its holder: the slot whose shard holds the live vector (``slot``), or,
after a forget, ``-slot - 1`` of the slot that applied it (a tombstone: it
makes an older observe that arrives later lose, and it is kept in that
slot's snapshots until ``engine.ledger.tombstones`` drops it).

An operation applies when its stamp is not older than the entry's: equal
applies again, which makes re-running a claim whose worker died after
touching the table harmless. Within one batch only the newest operation per
id counts (the others are superseded before they meet the table).
"""

from __future__ import annotations

import numpy as np

from shm.idtable import IdTable

OBSERVE, FORGET = 0, 1


def newest(ids: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Indices of the newest operation per id (the later one of equal stamps), in input order."""
    n = len(ids)
    if n < 2:
        return np.arange(n)
    order = np.lexsort((np.arange(n), stamps, ids))
    last = np.ones(n, bool)
    last[:-1] = ids[order[1:]] != ids[order[:-1]]
    return np.sort(order[last])


def tombstone(slot: int) -> int:
    return -slot - 1


class Book:
    """One slot's view of the table (the worker's, and recovery's)."""

    def __init__(self, table: IdTable, slot: int):
        self.table = table
        self.slot = slot

    def apply(self, space: int, kind: int, ids: np.ndarray, stamps: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Apply one kind's operations; returns (indices into ``ids`` of those
        that applied, their previous holders)."""
        pick = newest(ids, stamps)
        holder = self.slot if kind == OBSERVE else tombstone(self.slot)
        won, prev = self.table.apply(space, ids[pick], stamps[pick], holder)
        return pick[won], prev[won]

    def held_here(self, space: int, ids: np.ndarray) -> np.ndarray:
        """Mask: which of ``ids`` the table says this slot holds live."""
        return self.table.holders(space, ids.ravel()).reshape(ids.shape) == self.slot

    def held(self, space: int) -> int:
        return int(self.table.held[self.slot, space])


def absent(table: IdTable, space: int, ids: np.ndarray) -> np.ndarray:
    """Mask: which of ``ids`` the space does not hold live now."""
    return table.holders(space, np.asarray(ids, np.uint64)) < 0


def live_after(table: IdTable, space: int, ids: np.ndarray, queued: tuple) -> np.ndarray:
    """Mask: which of ``ids`` the space will hold live once the operations
    ``queued`` (ids, stamps, kinds: what waits in the rings) are applied.
    Per id the newest queued operation decides where it is not older than
    the table's entry (the rule above); elsewhere the entry does. Read the
    rings before calling this: an operation that leaves a ring meanwhile
    was applied to the table first."""
    ids = np.asarray(ids, np.uint64)
    holders, stamps = table.entries(space, ids)
    live = holders >= 0
    q_ids, q_stamps, q_kinds = queued
    if not len(q_ids) or not len(ids):
        return live
    pick = newest(q_ids, q_stamps)
    order = np.argsort(q_ids[pick], kind="stable")
    n_ids, n_stamps, n_kinds = q_ids[pick][order], q_stamps[pick][order], q_kinds[pick][order]
    at = np.minimum(np.searchsorted(n_ids, ids), len(n_ids) - 1)
    decides = (n_ids[at] == ids) & (n_stamps[at] >= stamps)
    live[decides] = n_kinds[at[decides]] == OBSERVE
    return live


def apply_ops(book: Book, shards, space: int, kind: int, ids: np.ndarray, stamps: np.ndarray, vectors,
              insert) -> tuple[np.ndarray, np.ndarray]:
    """Apply operations of one kind to the table, then to this slot's shard:
    the observes that won are inserted (``insert(space, indices)``), a
    forget that won marks the vector deleted if this slot held it. Returns
    (indices of the operations that applied, their previous holders)."""
    chosen, prev = book.apply(space, kind, ids, stamps)
    if kind == OBSERVE:
        if len(chosen):
            insert(space, chosen)
    else:
        here = chosen[prev == book.slot]
        if len(here):
            shards.delete(space, ids[here])
    return chosen, prev


def keep_rows(ids: np.ndarray, dist: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's entries where ``ok``, in order. A result array has one
    width: a row with fewer is padded at an infinite distance (the padding's
    id means nothing; ``engine.producer.recall.merge`` drops it), so one
    short row never costs the other rows their results."""
    width = int(ok.sum(axis=1).max()) if len(ok) else 0
    out_ids = np.zeros((len(ids), width), ids.dtype)
    out_dist = np.full((len(ids), width), np.inf, dist.dtype)
    for r in range(len(ids)):
        n = int(ok[r].sum())
        out_ids[r, :n] = ids[r][ok[r]]
        out_dist[r, :n] = dist[r][ok[r]]
    return out_ids, out_dist
