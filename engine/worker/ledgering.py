"""Forget and upsert inside a worker (``Worker`` mixes this in; ``engine.ledger``).

* ``_apply``: one space's operations of one kind from a claim go through
  the identity table first (``engine.ledger.book``: newest stamp wins, an
  older one is dropped), then into the shard; returns what to log.
* ``held_search``: recall answers only with vectors the table says this
  slot holds; a copy left behind by a replacement or a forget applied on
  another slot is marked deleted when a search meets it.
* ``publish_counts``/``publish_changed``: ``index_vectors`` (live, from the
  table) and ``index_deleted_vectors`` (kept in the shard, not live) of this
  slot; another slot's forget or replacement changes them too, so they are
  looked at again about every ``COUNTS_EVERY_S``.
* ``compact``: a shard rebuild (``engine.ledger.compaction``) gets about a
  third of the worker's time, in slices; meanwhile the space's inserts go
  to the index being built (``ShardSet.building``).
"""

from __future__ import annotations

import time

import numpy as np

from engine.ledger import compaction
from engine.ledger.book import FORGET, apply_ops, keep_rows

# How often a worker looks for live counts of its slot that other slots changed.
COUNTS_EVERY_S = 0.25


class Ledgering:
    """Needs: book, shards, counts, compactor, metrics, published, counts_due,
    clock, slot, _insert (set by ``Worker``)."""

    def compact(self, busy_s: float = 0.0) -> bool:
        """Shard compaction (``engine.ledger.compaction``), if one is due or
        running: slices of about ``SLICE_S`` for about ``SHARE`` of the
        worker's time (``BACKLOG_SHARE`` while its rings hold records) (``busy_s``: how long the step's batch took), with
        recall queries answered between slices."""
        share = compaction.BACKLOG_SHARE if any(r.depth() for r in self.own) else compaction.SHARE
        budget = max(compaction.SLICE_S, busy_s * share / (1 - share))
        deadline = time.perf_counter() + budget
        worked = False
        while True:
            space = self.compactor.job.space if self.compactor.job is not None else None
            if not self.compactor.step():
                return worked
            worked = True
            if space is not None and self.compactor.job is None:  # swapped in
                self.counts[space] = self.shards.count(space)
                self.publish_counts(space)
                return worked
            if self.compactor.job is None or time.perf_counter() >= deadline:
                return worked
            self.heartbeat()
            self.answer_queries()

    def held_search(self, space: int, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the space's shard, keeping only the vectors the identity table
        says this slot holds: a copy left behind by a replacement or a forget
        applied elsewhere is marked deleted here when a search meets it, and the
        search runs again (at most twice). Rows that still meet such copies
        are asked for more (``_fill``); what is foreign is cut out."""
        for _ in range(3):
            ids, dist = self.shards.search(space, queries, k, ef)
            if ids.size == 0:
                return ids, dist
            ok = self.book.held_here(space, ids.astype(np.uint64))
            if ok.all():
                return ids, dist
            self._forget_stale(space, ids[~ok])
        return self._fill(space, queries, k, ef, ids, dist, ok)

    def _forget_stale(self, space: int, labels: np.ndarray) -> None:
        self.shards.delete(space, np.unique(labels).astype(np.uint64))

    def _fill(self, space: int, queries, k: int, ef: int, ids, dist, ok) -> tuple[np.ndarray, np.ndarray]:
        """Rows with fewer held results than the others ask the shard again,
        for four times as many each round, up to all it has; a row the
        shard cannot fill keeps what it found (``keep_rows`` pads it)."""
        want = min(ids.shape[1], self.book.held(space))  # no row can have more than this slot holds
        short = np.flatnonzero(ok.sum(axis=1) < want)
        fetch, limit = ids.shape[1], self.shards.elements(space)
        rows = {int(r): (ids[r][ok[r]], dist[r][ok[r]]) for r in short}
        while len(short) and fetch < limit:
            fetch = min(limit, fetch * 4)
            more_ids, more_dist = self.shards.search(space, queries[short], fetch, max(ef, fetch))
            if more_ids.size == 0:
                break
            more_ok = self.book.held_here(space, more_ids.astype(np.uint64))
            if not more_ok.all():
                self._forget_stale(space, more_ids[~more_ok])
            for j, r in enumerate(short.tolist()):
                rows[r] = more_ids[j][more_ok[j]][:want], more_dist[j][more_ok[j]][:want]
            short = np.asarray([r for r in short.tolist() if len(rows[r][0]) < want], np.int64)
        ids, dist = ids.copy(), dist.copy()
        ok = ok.copy()
        for r, (r_ids, r_dist) in rows.items():
            n = len(r_ids)
            ids[r, :n], dist[r, :n] = r_ids, r_dist
            ok[r] = np.arange(ids.shape[1]) < n
        return keep_rows(ids, dist, ok)

    def _apply(self, space: int, kind: int, ids, stamps, vectors, positions) -> tuple:
        """Apply one space's operations of one kind (``engine.ledger.book``);
        returns what to log: the ones that applied (an older one is dropped)."""
        if not 0 <= space < len(self.counts):
            self.metrics.inc("batch_failures_total", worker_id=self.slot, error_type="other")
            raise ValueError(f"ring record names space {space}, outside [0, {len(self.counts)})")

        def insert(sp, chosen):
            self._insert(sp, ids[chosen], vectors[chosen], None if positions is None else positions[chosen])
        chosen, _ = apply_ops(self.book, self.shards, space, kind, ids, stamps, vectors, insert)
        self.counts[space] = self.shards.count(space)
        if kind == FORGET:
            return space, kind, ids[chosen], stamps[chosen], None
        return space, kind, ids[chosen], stamps[chosen], vectors[chosen]

    def publish_counts(self, space: int) -> None:
        """Live vectors this slot holds of ``space``, and dead ones its shard still keeps."""
        held = self.book.held(space)
        self.published[space] = held
        self.metrics.set("index_vectors", float(held), memory_space=space)
        self.metrics.set("index_deleted_vectors", float(max(0, self.shards.count(space) - held)),
                         memory_space=space)

    def publish_changed(self) -> None:
        """Counts of spaces whose live vectors on this slot another slot changed
        (a forget or a replacement applied there), about every ``COUNTS_EVERY_S``."""
        now = self.clock()
        if now < self.counts_due:
            return
        self.counts_due = now + COUNTS_EVERY_S
        held = self.book.table.held[self.slot]
        for space in np.flatnonzero(held != self.published):
            self.publish_counts(int(space))


def groups_of(spaces: np.ndarray, kinds: np.ndarray) -> list[tuple[int, int, object]]:
    """[(space, kind, selector)] of a claim's records (observes before forgets;
    their stamps, not this order, decide between operations on one id)."""
    if not len(spaces):
        return []
    if (spaces == spaces[0]).all() and (kinds == kinds[0]).all():
        return [(int(spaces[0]), int(kinds[0]), slice(None))]
    out = []
    for sp in np.unique(spaces):
        in_space = spaces == sp
        for kind in np.unique(kinds[in_space]):
            out.append((int(sp), int(kind), in_space & (kinds == kind)))
    return out
