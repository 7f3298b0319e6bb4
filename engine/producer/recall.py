"""The top-k merge of per-shard answers (DESIGN §5); the distances they carry
are hnswlib's (``engine.distances``), so exact and HNSW candidates merge."""

from __future__ import annotations

import numpy as np


def merge(parts: list[tuple[np.ndarray, np.ndarray]], q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source candidates (ids (q, c_i), distances (q, c_i)) into top-k.

    Duplicate ids (an id found in two shards, or in a shard and a ring) keep
    their smallest distance. Ties are broken by id so results are stable.
    Entries at an infinite distance are padding (``engine.ledger.book.keep_rows``)
    and are dropped; the answer's width is then the narrowest row's count.
    """
    parts = [(i, d) for i, d in parts if i.shape[1] > 0]
    if not parts:
        return np.zeros((q, 0), np.uint64), np.zeros((q, 0), np.float32)
    ids = np.concatenate([p[0] for p in parts], axis=1)
    dist = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)
    rows_ids, rows_dist = [], []
    for r in range(q):
        order = np.lexsort((ids[r], dist[r]))
        ri, rd = ids[r][order], dist[r][order]
        _, first = np.unique(ri, return_index=True)
        keep = np.sort(first)
        keep = keep[np.isfinite(rd[keep])][:k]
        rows_ids.append(ri[keep])
        rows_dist.append(rd[keep])
    width = min(len(x) for x in rows_ids)
    return (np.stack([x[:width] for x in rows_ids]).astype(np.uint64),
            np.stack([x[:width] for x in rows_dist]).astype(np.float32))
