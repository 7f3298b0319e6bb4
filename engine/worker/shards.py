"""The HNSW shards of one worker slot: one hnswlib index per memory space.

Single owner: the worker process of the slot; hnswlib is not safe for a
search concurrent with an insert on one index, and the worker never does
both at once (it answers queries between insert slices, DESIGN §5). Capacity grows
by doubling with ``resize_index``. ``num_threads=1``: one core per worker.
Indexes loaded from a snapshot are adopted as they are (``adopt``).

While a shard is rebuilt (``engine.ledger.compaction``) its space has a
second index, ``building[space]``: inserts go there only (the old copy of
an inserted label is marked deleted), deletes go to both, and a search asks
both and merges. So the rebuild never inserts a vector twice, and the swap
(``replace``) leaves nothing behind.
"""

from __future__ import annotations

import hnswlib
import numpy as np

from engine.errors import ResizeError


class Building:
    """The index a compaction is filling for one space."""

    def __init__(self, index: hnswlib.Index, ef: int, old_labels: np.ndarray):
        self.index = index
        self.ef = ef
        self.dead: set = set()   # labels marked deleted in it
        self.fresh: set = set()  # labels inserted into it (their old copies are dead)
        self.old_labels = old_labels  # sorted: labels live in the old index at the start


class ShardSet:
    def __init__(self, dim: int, metric: str, m: int, ef_construction: int, ef_search: int,
                 initial_capacity: int):
        self.dim = dim
        self.metric = metric
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.initial_capacity = initial_capacity
        self.shards: dict[int, hnswlib.Index] = {}
        self._ef: dict[int, int] = {}
        # Labels marked deleted per shard (hnswlib does not say how many): a
        # search asks for at most the live count, which hnswlib needs.
        self.dead: dict[int, set] = {}
        self.building: dict[int, Building] = {}

    def _new(self, capacity: int | None = None) -> hnswlib.Index:
        index = hnswlib.Index(space=self.metric, dim=self.dim)
        index.init_index(max_elements=capacity or self.initial_capacity, M=self.m,
                         ef_construction=self.ef_construction)
        index.set_num_threads(1)
        index.set_ef(self.ef_search)
        return index

    def adopt(self, space: int, index: hnswlib.Index, dead=()) -> int:
        """Take over an index loaded from a snapshot (``load_index`` keeps its
        capacity, M and ef_construction, not ef or threads, and its deleted
        marks, ``dead``: the snapshot lists them); returns its count."""
        self.dead[space] = set(int(x) for x in dead)
        index.set_num_threads(1)
        index.set_ef(self.ef_search)
        self.shards[space] = index
        self._ef[space] = self.ef_search
        return index.get_current_count()

    def named(self, name_of) -> list[tuple[str, hnswlib.Index]]:
        """[(space name, index)] of every shard, for a snapshot."""
        return [(name_of(space), index) for space, index in sorted(self.shards.items())]

    def blank(self, live: int) -> hnswlib.Index:
        """An empty index sized for ``live`` vectors (a compaction's target)."""
        return self._new(max(self.initial_capacity, live + live // 4))

    def build(self, space: int, live: np.ndarray) -> hnswlib.Index:
        """Start filling a new index for ``space`` (``live``: the labels to copy)."""
        index = self.blank(len(live))
        self.building[space] = Building(index, self.ef_search, np.sort(live))
        return index

    def replace(self, space: int) -> int:
        """Swap the index built for ``space`` in; returns its count."""
        b = self.building.pop(space)
        b.index.set_num_threads(1)
        b.index.set_ef(self.ef_search)
        self.shards[space] = b.index
        self._ef[space] = self.ef_search
        self.dead[space] = b.dead
        return b.index.get_current_count()

    def insert(self, space: int, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Insert a batch of one space (a known label is updated in place, a
        deleted one comes back); returns the shard's new element count."""
        b = self.building.get(space)
        if b is not None:
            self.add(space, b.index, ids, vectors)
            labels = ids.tolist()
            b.dead.difference_update(labels)
            b.fresh.update(labels)
            old = ids[np.isin(ids, b.old_labels)]  # their old copies, if still there, are dead now
            self._mark(self.shards[space], self.dead.setdefault(space, set()), old)
            return self.shards[space].get_current_count()
        index = self.shards.get(space)
        if index is None:
            index = self.shards[space] = self._new()
            self._ef[space] = self.ef_search
        self.add(space, index, ids, vectors)
        dead = self.dead.get(space)
        if dead:
            dead.difference_update(ids.tolist())  # a deleted label added again is live again
        return index.get_current_count()

    def add(self, space: int, index: hnswlib.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
        """``add_items`` into ``index``, doubling its capacity first when needed."""
        need = index.get_current_count() + len(ids)
        capacity = index.get_max_elements()
        if need > capacity:
            while capacity < need:
                capacity *= 2
            try:
                index.resize_index(capacity)
            except (RuntimeError, MemoryError) as exc:
                raise ResizeError(f"resize of shard {space} to {capacity} failed: {exc}") from exc
        index.add_items(vectors, ids, num_threads=1)

    def delete(self, space: int, ids: np.ndarray) -> int:
        """Mark ``ids`` deleted in the space's shard (hidden from search, memory
        kept until a compaction); returns how many were live there."""
        index = self.shards.get(space)
        n = 0 if index is None else self._mark(index, self.dead.setdefault(space, set()), ids)
        b = self.building.get(space)
        if b is not None:
            n += self._mark(b.index, b.dead, ids)
        return n

    @staticmethod
    def _mark(index: hnswlib.Index, dead: set, ids: np.ndarray) -> int:
        n = 0
        for label in ids.tolist():
            try:
                index.mark_deleted(label)
                dead.add(label)
                n += 1
            except RuntimeError:
                pass  # not in this index, or deleted already
        return n

    def live(self, space: int) -> int:
        """Vectors of the shard not marked deleted."""
        return self.count(space) - len(self.dead.get(space, ()))

    def count(self, space: int) -> int:
        index = self.shards.get(space)
        return 0 if index is None else index.get_current_count()

    def elements(self, space: int) -> int:
        """Vectors a search of the space can meet: its shard's, and a running rebuild's."""
        b = self.building.get(space)
        return self.count(space) + (0 if b is None else b.index.get_current_count())

    def search(self, space: int, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.shards.get(space)
        none = np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
        got = none if index is None else self._search(index, self.live(space), queries, k, ef, space)
        b = self.building.get(space)
        if b is None:
            return got
        more = self._search(b.index, b.index.get_current_count() - len(b.dead), queries, k, ef, None, b)
        return _merge(got, more, k)

    def _search(self, index, n: int, queries, k: int, ef: int, space=None, b: Building | None = None):
        """knn of one index with ``n`` live vectors; ef cached per space (or in ``b``)."""
        if n <= 0:
            return np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
        k = min(k, n)
        ef = max(ef, k)
        self._set_ef(index, ef, space, b)
        try:
            return index.knn_query(queries, k=k, num_threads=1)
        except RuntimeError:
            pass
        # hnswlib raises when its search found fewer than k results (a small
        # or sparsely linked graph, or deleted labels it could not tell
        # apart): an exhaustive ef finds them all, and a smaller k whatever
        # is left.
        self._set_ef(index, max(index.get_current_count(), ef), space, b)
        while True:
            try:
                return index.knn_query(queries, k=k, num_threads=1)
            except RuntimeError:
                if k <= 1:
                    return np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
                k //= 2

    def _set_ef(self, index, ef: int, space, b: Building | None) -> None:
        current = b.ef if b is not None else self._ef.get(space)
        if current != ef:
            index.set_ef(ef)
            if b is not None:
                b.ef = ef
            else:
                self._ef[space] = ef


def _merge(a, b, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of two answers by distance, each label once (the nearer copy)."""
    ids = np.concatenate([a[0], b[0]], axis=1)
    dist = np.concatenate([a[1], b[1]], axis=1)
    rows = []
    for r in range(len(ids)):
        order = np.lexsort((ids[r], dist[r]))
        _, first = np.unique(ids[r][order], return_index=True)
        rows.append(order[np.sort(first)][:k])
    width = min((len(x) for x in rows), default=0)
    take = np.stack([x[:width] for x in rows]) if rows else np.zeros((0, 0), np.int64)
    return np.take_along_axis(ids, take, axis=1), np.take_along_axis(dist, take, axis=1)
