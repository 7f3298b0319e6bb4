"""Reading aggregated values back out of array snapshots (status, load, tests).

The exporter goes through prometheus_client; the CLI only needs a few totals
and percentiles, computed here from the same cells so there is one source of
truth and no separate bookkeeping.
"""

from __future__ import annotations

import numpy as np

from metrics import catalog as cat
from metrics.array import MetricArray


def block(array: MetricArray, snapshot: np.ndarray, name: str) -> np.ndarray:
    """A stored metric summed over rows, shaped ``label sizes + (width,)``."""
    p = array.cellmap.placement(name)
    cells = snapshot[:, p.base:p.stop]
    agg = cells.max(axis=0) if p.metric.agg == cat.MAX else cells.sum(axis=0)
    return agg.reshape(p.sizes + (p.width,))


def histogram(array: MetricArray, snapshot: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(upper bounds, non-cumulative bucket counts incl. +Inf, sum) over all label values."""
    p = array.cellmap.placement(name)
    if p.metric.type != cat.HISTOGRAM:
        raise ValueError(f"{name} is not a histogram")
    b = block(array, snapshot, name).reshape(-1, p.width).sum(axis=0)
    nb = len(p.bounds) + 1
    return p.bounds, b[:nb], float(b[nb])


def quantile(bounds: np.ndarray, counts: np.ndarray, q: float) -> float | None:
    """Estimate the q-quantile like PromQL's ``histogram_quantile``: linear
    interpolation inside the bucket; the +Inf bucket answers its lower bound."""
    total = float(counts.sum())
    if total <= 0:
        return None
    rank = q * total
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= len(bounds):
        return float(bounds[-1])
    lo = 0.0 if i == 0 else float(bounds[i - 1])
    hi = float(bounds[i])
    before = 0.0 if i == 0 else float(cum[i - 1])
    inside = float(counts[i])
    return hi if inside <= 0 else lo + (hi - lo) * (rank - before) / inside
