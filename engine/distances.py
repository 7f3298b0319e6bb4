"""Exact distances, as hnswlib's spaces define them, between query vectors and vectors.

Shared by the producer's fresh scan and merge (``engine.producer.recall``)
and the recall probes (``engine.recallhealth.probeset``): ``l2`` is the
squared Euclidean distance, ``ip`` is ``1 - <a, b>``, ``cosine`` is
``1 - <a, b> / (|a| |b|)``, so exact and HNSW candidates can be merged.
"""

from __future__ import annotations

import numpy as np


def exact_distances(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """(q, n) distances between queries (q, d) and vectors (n, d)."""
    if metric == "l2":
        qn = (queries * queries).sum(axis=1)[:, None]
        vn = (vectors * vectors).sum(axis=1)[None, :]
        return np.maximum(qn + vn - 2.0 * queries @ vectors.T, 0.0).astype(np.float32)
    if metric == "ip":
        return (1.0 - queries @ vectors.T).astype(np.float32)
    qs = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-30)
    vs = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-30)
    return (1.0 - qs @ vs.T).astype(np.float32)
