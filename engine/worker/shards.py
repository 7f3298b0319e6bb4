"""The HNSW shards of one worker slot: one hnswlib index per memory space.

Single owner: the worker process of the slot; hnswlib is not safe for a
search concurrent with an insert on one index, and the worker never does
both at once (it answers queries between insert slices, DESIGN §5). Capacity grows
by doubling with ``resize_index``. ``num_threads=1``: one core per worker.
Indexes loaded from a snapshot are adopted as they are (``adopt``).
"""

from __future__ import annotations

import hnswlib
import numpy as np

from engine.errors import ResizeError


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

    def replace(self, space: int, index: hnswlib.Index) -> int:
        """Swap a rebuilt index in for the space's shard; returns its count."""
        index.set_num_threads(1)
        index.set_ef(self.ef_search)
        self.shards[space] = index
        self._ef[space] = self.ef_search
        self.dead[space] = set()
        return index.get_current_count()

    def insert(self, space: int, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Insert a batch of one space (a known label is updated in place, a
        deleted one comes back); returns the shard's new element count."""
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
        dead = self.dead.setdefault(space, set())
        n = 0
        for label in () if index is None else ids.tolist():
            try:
                index.mark_deleted(label)
                dead.add(label)
                n += 1
            except RuntimeError:
                pass  # not in this shard, or deleted already
        return n

    def live(self, space: int) -> int:
        """Vectors of the shard not marked deleted."""
        return self.count(space) - len(self.dead.get(space, ()))

    def count(self, space: int) -> int:
        index = self.shards.get(space)
        return 0 if index is None else index.get_current_count()

    def search(self, space: int, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.shards.get(space)
        n = 0 if index is None else self.live(space)
        if n <= 0:
            return np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
        k = min(k, n)
        ef = max(ef, k)
        if self._ef[space] != ef:
            index.set_ef(ef)
            self._ef[space] = ef
        try:
            return index.knn_query(queries, k=k, num_threads=1)
        except RuntimeError:
            pass
        # hnswlib raises when its search found fewer than k results (a small
        # or sparsely linked graph, or deleted labels it could not tell
        # apart): an exhaustive ef finds them all, and a smaller k whatever
        # is left.
        index.set_ef(max(self.count(space), ef))
        self._ef[space] = max(self.count(space), ef)
        while True:
            try:
                return index.knn_query(queries, k=k, num_threads=1)
            except RuntimeError:
                if k <= 1:
                    return np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
                k //= 2
