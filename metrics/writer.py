"""Recording metrics into one row of the metric array, at a cost per *batch*.

A ``MetricWriter`` owns one row. Each call resolves ``(name, labels)`` to a
cell offset once (then a dict lookup) and updates the row with one numpy
operation; ``observe_many`` records a whole batch of values with one
``searchsorted`` + ``bincount``. Typical use in a worker, per batch::

    w.inc("observations_total", len(ids), memory_space=space, priority="normal")
    w.inc("batches_processed_total", worker_id=slot)
    w.observe("batch_size", len(ids), worker_id=slot)
    w.observe_many("observation_latency_seconds", now - enq_times, memory_space=space)

Label values: ``memory_space`` is the space *index* (int; out of range folds
into ``_other``), ``worker_id`` an int slot, other labels their string value.
An unknown metric or label value raises (``UnknownMetric``/``LabelError``,
both naming it).

Concurrency contract: single writer per row, so no lock (DESIGN §9): the
process owning the row is the only one that writes it. ``LockedMetricWriter``
is for the shared overflow row; it holds the row's byte lock around each call.
A writer is not thread-safe; give each thread its own row or serialise calls.
A child forked from a row's owner (e.g. a snapshot child) must not record on
that row: the parent records the child's results after it exits.
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np

from metrics import catalog as cat
from metrics.array import MetricArray
from metrics.errors import RecordError
from shm.lock import LockFile

_CACHE_LIMIT = 1 << 16  # bounded: folded space indices could otherwise grow it


class _Slot:
    """A resolved series: its offset and what the hot path needs to know."""

    __slots__ = ("off", "counter", "nb", "bounds", "bounds_list")

    def __init__(self, off: int, placement):
        self.off = off
        self.counter = placement.metric.type == cat.COUNTER
        self.bounds = placement.bounds
        self.bounds_list = placement.bounds.tolist()
        self.nb = len(self.bounds_list) + 1  # bucket cells, +Inf overflow included


class MetricWriter:
    """Writes the metrics of one row (single writer: the owner of ``row``)."""

    def __init__(self, array: MetricArray, row: int):
        if not 0 <= row < array.row_map.total:
            raise ValueError(f"row {row} not in 0..{array.row_map.total - 1}")
        self.array = array
        self.row = row
        self._cells = array.cells[row]  # 1-D view of this row
        self._cellmap = array.cellmap
        self._caches: dict[str, dict] = {"inc": {}, "set": {}, "observe": {}}

    # -- resolution (cold path) ---------------------------------------------
    def _resolve(self, op: str, name: str, labels: dict) -> _Slot:
        p = self._cellmap.placement(name)
        kind = p.metric.type
        if op == "inc" and kind == cat.HISTOGRAM or op == "set" and kind != cat.GAUGE \
                or op == "observe" and kind != cat.HISTOGRAM:
            raise RecordError(f"{name} is a {kind}: {op}() does not apply")
        slot = _Slot(self._cellmap.offset(name, labels), p)
        cache = self._caches[op]
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[(name, tuple(labels.items()))] = slot
        return slot

    # -- hot path -----------------------------------------------------------
    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        """Add ``value`` to a counter (>= 0) or a gauge (any sign)."""
        s = self._caches["inc"].get((name, tuple(labels.items()))) or self._resolve("inc", name, labels)
        if s.counter and not value >= 0:  # also refuses NaN
            raise RecordError(f"{name}: a counter only goes up (inc by {value!r})")
        self._cells[s.off] += value

    def set(self, name: str, value: float, **labels) -> None:
        """Set a gauge."""
        s = self._caches["set"].get((name, tuple(labels.items()))) or self._resolve("set", name, labels)
        self._cells[s.off] = value

    def observe(self, name: str, value: float, **labels) -> None:
        """Record one value into a histogram. Non-finite values are dropped:
        one NaN would poison ``_sum`` for the life of the row."""
        s = self._caches["observe"].get((name, tuple(labels.items()))) \
            or self._resolve("observe", name, labels)
        if not math.isfinite(value):
            return
        cells, off = self._cells, s.off
        cells[off + bisect_left(s.bounds_list, value)] += 1.0  # le: v <= bound
        cells[off + s.nb] += value
        cells[off + s.nb + 1] += 1.0

    def observe_many(self, name: str, values, **labels) -> None:
        """Record a batch of values with one vectorised update (non-finite dropped)."""
        s = self._caches["observe"].get((name, tuple(labels.items()))) \
            or self._resolve("observe", name, labels)
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        total = float(v.sum())
        if not math.isfinite(total):  # rare: filter, then recompute
            v = v[np.isfinite(v)]
            if v.size == 0:
                return
            total = float(v.sum())
        off, nb = s.off, s.nb
        counts = np.bincount(np.searchsorted(s.bounds, v, side="left"), minlength=nb)
        cells = self._cells
        cells[off:off + nb] += counts
        cells[off + nb] += total
        cells[off + nb + 1] += v.size

    # -- reading back (tests, diagnostics) -----------------------------------
    def value(self, name: str, **labels) -> float | dict:
        """This row's value of a series; for a histogram a dict of
        non-cumulative ``buckets``, ``sum`` and ``count``."""
        p = self._cellmap.placement(name)
        off = self._cellmap.offset(name, labels)
        if p.metric.type != cat.HISTOGRAM:
            return float(self._cells[off])
        nb = len(p.bounds) + 1
        return {"buckets": self._cells[off:off + nb].tolist(),
                "sum": float(self._cells[off + nb]), "count": float(self._cells[off + nb + 1])}


class LockedMetricWriter(MetricWriter):
    """A writer for a row shared by several processes (the overflow row):
    each record call holds byte ``row`` of ``lock`` (kernel-released)."""

    def __init__(self, array: MetricArray, row: int, lock: LockFile):
        super().__init__(array, row)
        self._lock = lock

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self._lock.hold(self.row):
            super().inc(name, value, **labels)

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock.hold(self.row):
            super().set(name, value, **labels)

    def observe(self, name: str, value: float, **labels) -> None:
        with self._lock.hold(self.row):
            super().observe(name, value, **labels)

    def observe_many(self, name: str, values, **labels) -> None:
        with self._lock.hold(self.row):
            super().observe_many(name, values, **labels)


class NullWriter:
    """Records nothing. Engines started with ``--no-metrics`` use it so a
    benchmark can measure, in the same run, what recording costs."""

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        pass

    def set(self, name: str, value: float, **labels) -> None:
        pass

    def observe(self, name: str, value: float, **labels) -> None:
        pass

    def observe_many(self, name: str, values, **labels) -> None:
        pass
