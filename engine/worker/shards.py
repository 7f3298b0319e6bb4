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

    def _new(self) -> hnswlib.Index:
        index = hnswlib.Index(space=self.metric, dim=self.dim)
        index.init_index(max_elements=self.initial_capacity, M=self.m,
                         ef_construction=self.ef_construction)
        index.set_num_threads(1)
        index.set_ef(self.ef_search)
        return index

    def adopt(self, space: int, index: hnswlib.Index) -> int:
        """Take over an index loaded from a snapshot (``load_index`` keeps its
        capacity, M and ef_construction, not ef or threads); returns its count."""
        index.set_num_threads(1)
        index.set_ef(self.ef_search)
        self.shards[space] = index
        self._ef[space] = self.ef_search
        return index.get_current_count()

    def named(self, name_of) -> list[tuple[str, hnswlib.Index]]:
        """[(space name, index)] of every shard, for a snapshot."""
        return [(name_of(space), index) for space, index in sorted(self.shards.items())]

    def insert(self, space: int, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Insert a batch of one space; returns the shard's new element count."""
        index = self.shards.get(space)
        if index is None:
            index = self.shards[space] = self._new()
            self._ef[space] = self.ef_search
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
        return index.get_current_count()

    def count(self, space: int) -> int:
        index = self.shards.get(space)
        return 0 if index is None else index.get_current_count()

    def search(self, space: int, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.shards.get(space)
        n = 0 if index is None else index.get_current_count()
        if n == 0:
            return np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
        k = min(k, n)
        ef = max(ef, k)
        if self._ef[space] != ef:
            index.set_ef(ef)
            self._ef[space] = ef
        try:
            return index.knn_query(queries, k=k, num_threads=1)
        except RuntimeError:
            # hnswlib raises when its search found fewer than k results (a
            # small or sparsely linked graph); an exhaustive ef finds them all.
            index.set_ef(max(n, ef))
            self._ef[space] = max(n, ef)
            return index.knn_query(queries, k=k, num_threads=1)
