"""The reserved probe shard: known vectors, known queries, known answers.

Every worker builds the same small index at start from a fixed seed (no
WAL, no snapshot, no metrics, not a memory space: it is addressed with
``PROBE_SPACE``, outside the range of space indices, so status, metrics and
recovery never see it). The prober computes the expected answers from the
same seed with exact distances, so a wrong answer means the worker's search
path is broken, not that HNSW is approximate: with ``ef`` = the shard's size
the search over a graph this small is exhaustive.
"""

from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np

from engine.distances import exact_distances

from engine.control.query import PROBE_SPACE  # noqa: E402  the space index naming the probe shard
PROBE_SEED = 20240917
PROBE_VECTORS = 64
PROBE_QUERIES = 4
PROBE_K = 3
PROBE_ID_BASE = 1 << 62  # far from any id a test or a client would pick


@dataclass(frozen=True)
class ProbeSet:
    ids: np.ndarray        # u64 (n,)
    vectors: np.ndarray    # f32 (n, dim)
    queries: np.ndarray    # f32 (q, dim)
    expected: np.ndarray   # u64 (q, k): exact nearest ids, nearest first

    @classmethod
    def build(cls, dim: int, metric: str, seed: int = PROBE_SEED) -> "ProbeSet":
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((PROBE_VECTORS, dim)).astype(np.float32)
        ids = np.arange(PROBE_ID_BASE, PROBE_ID_BASE + PROBE_VECTORS, dtype=np.uint64)
        picks = rng.choice(PROBE_VECTORS, PROBE_QUERIES, replace=False)
        queries = (vectors[picks] + 0.01 * rng.standard_normal((PROBE_QUERIES, dim))).astype(np.float32)
        order = np.argsort(exact_distances(queries, vectors, metric), axis=1, kind="stable")[:, :PROBE_K]
        return cls(ids, vectors, queries, ids[order])

    def check(self, ids: np.ndarray) -> bool:
        """Whether an answer (ids (q, c)) is the expected one."""
        ids = np.asarray(ids)
        return ids.shape == self.expected.shape and bool((ids == self.expected).all())


class ProbeShard:
    """A worker's probe index; ``route`` puts it in front of the user shards' search.

    ``_corrupt`` (hidden, for tests only) labels the vectors with shuffled
    ids, so the shard answers fast and wrong."""

    def __init__(self, dim: int, metric: str, m: int, ef_construction: int, *, _corrupt: bool = False):
        self.set = ProbeSet.build(dim, metric)
        labels = self.set.ids[::-1].copy() if _corrupt else self.set.ids
        self.index = hnswlib.Index(space=metric, dim=dim)
        self.index.init_index(max_elements=PROBE_VECTORS, M=m, ef_construction=ef_construction)
        self.index.set_num_threads(1)
        self.index.add_items(self.set.vectors, labels, num_threads=1)
        self.index.set_ef(PROBE_VECTORS)

    @classmethod
    def for_params(cls, p, **kw) -> "ProbeShard":
        return cls(p.dim, p.metric, p.hnsw_m, p.ef_construction, **kw)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.knn_query(queries, k=min(k, PROBE_VECTORS), num_threads=1)

    def route(self, search):
        """``search(space, queries, k, ef)`` that answers ``PROBE_SPACE`` from this shard."""
        def routed(space, queries, k, ef):
            if space == PROBE_SPACE:
                return self.search(queries, k)
            return search(space, queries, k, ef)
        return routed
