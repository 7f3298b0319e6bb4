"""A prometheus_client collector over the metric array (the exporter's side).

Each scrape takes ONE copy of the array (``MetricArray.snapshot``), combines
the rows of all writers (sum, or max where the catalog says so), and yields
``CounterMetricFamily`` / ``GaugeMetricFamily`` / ``HistogramMetricFamily``
objects that prometheus_client's exposition turns into text or OpenMetrics.

* Every series of every enumerated label combination, every worker slot and
  every named space is exported from the start, at 0, so dashboards never show
  empty panels and ``rate()`` has a starting point.
* Histograms are stored as non-cumulative buckets; here they are made
  cumulative, and ``_count`` is the +Inf bucket (so ``+Inf == _count`` even if
  the scrape raced a writer between its bucket and count updates).
* ``memory_space`` values are names from the ``space_names()`` callback,
  called once per scrape. Indices without a (non-empty) name are not exported;
  ``_other`` always is. Two indices with the same name are merged.
* Gauges marked ``source="live"`` come from the ``live()`` callback:
  ``{name: [({label: value}, number), ...]}``. Entries whose labels do not
  match the catalog are dropped and logged.

A failing callback is logged and costs only its own series: the scrape of the
array still succeeds. The collector only reads shared memory.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterable

import numpy as np
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, Metric as Family)
from prometheus_client.utils import floatToGoString

from metrics import catalog as cat
from metrics.array import MetricArray

log = logging.getLogger(__name__)

SpaceNames = Callable[[], dict]
Live = Callable[[], dict]

_FAMILY = {cat.COUNTER: CounterMetricFamily, cat.GAUGE: GaugeMetricFamily,
           cat.HISTOGRAM: HistogramMetricFamily}


class ArrayCollector:
    """Collector of every catalog metric; register it in a fresh ``CollectorRegistry``."""

    def __init__(self, array: MetricArray, space_names: SpaceNames | None = None,
                 live: Live | None = None, catalog: tuple[cat.Metric, ...] = cat.CATALOG):
        self.array = array
        self._space_names = space_names or dict
        self._live = live or dict
        self._catalog = catalog
        self._les = {m.name: [floatToGoString(b) for b in m.buckets] + ["+Inf"]
                     for m in catalog if m.type == cat.HISTOGRAM}

    def describe(self) -> Iterable[Family]:
        """Families without samples: lets a registry check names without a scrape."""
        for m in self._catalog:
            yield _FAMILY[m.type](m.full_name, m.help, labels=m.labels)

    def collect(self) -> Iterable[Family]:
        snap = self.array.snapshot()
        agg = self._aggregate(snap)
        del snap
        spaces = self._spaces()
        live = self._call_live()
        for m in self._catalog:
            if m.source == cat.LIVE:
                yield self._live_family(m, live.get(m.name, ()))
            else:
                yield self._array_family(m, agg, spaces)

    # -- aggregation ---------------------------------------------------------
    def _aggregate(self, snap: np.ndarray) -> np.ndarray:
        agg = snap.sum(axis=0)
        for p in self.array.cellmap.placements.values():
            if p.metric.agg == cat.MAX:
                agg[p.base:p.stop] = snap[:, p.base:p.stop].max(axis=0)
        return agg

    def _spaces(self) -> tuple[list[str], list[list[int]]]:
        """Exported space names and, for each, the column(s) it gathers."""
        max_spaces = self.array.max_spaces
        try:
            names = self._space_names() or {}
            valid = [(int(idx), name) for idx, name in names.items()
                     if isinstance(idx, (int, np.integer)) and 0 <= idx < max_spaces
                     and isinstance(name, str) and name]
        except Exception:  # a scrape must not fail because of the engine's callback
            log.exception("space_names() failed; exporting only %s", cat.OTHER_SPACE)
            valid = []
        groups: dict[str, list[int]] = {}
        for idx, name in sorted(valid):
            groups.setdefault(name, []).append(idx)
        groups.setdefault(cat.OTHER_SPACE, []).append(max_spaces)
        return list(groups), list(groups.values())

    def _array_family(self, m: cat.Metric, agg: np.ndarray, spaces) -> Family:
        p = self.array.cellmap.placements[m.name]
        block = agg[p.base:p.stop].reshape(p.sizes + (p.width,))
        values: list[list[str]] = []
        for axis, d in enumerate(p.dims):
            if d.domain == cat.MEMORY_SPACE:
                space_labels, cols = spaces
                block = _gather(block, axis, cols, m.agg)
                values.append(space_labels)
            elif d.domain == cat.WORKER_ID:
                values.append([str(i) for i in range(d.size)])
            else:
                values.append(list(d.values))
        flat = block.reshape(-1, p.width)
        fam = _FAMILY[m.type](m.full_name, m.help, labels=m.labels)
        combos = itertools.product(*values)
        if m.type != cat.HISTOGRAM:
            for labels, v in zip(combos, flat[:, 0].tolist()):
                fam.add_metric(labels, v)
            return fam
        nb = p.width - 2
        cum = np.cumsum(flat[:, :nb], axis=1).tolist()
        sums = flat[:, nb].tolist()
        les = self._les[m.name]
        for labels, c, s in zip(combos, cum, sums):
            fam.add_metric(labels, list(zip(les, c)), s)
        return fam

    # -- live gauges ----------------------------------------------------------
    def _call_live(self) -> dict:
        try:
            return self._live() or {}
        except Exception:
            log.exception("live() failed; live gauges omitted from this scrape")
            return {}

    def _live_family(self, m: cat.Metric, entries) -> Family:
        fam = GaugeMetricFamily(m.full_name, m.help, labels=m.labels)
        seen = set()
        for entry in entries:
            try:
                labels, value = entry
                key = _live_labels(m, labels)
                value = float(value)
            except (TypeError, ValueError) as exc:
                log.warning("live %s: dropped %r: %s", m.name, entry, exc)
                continue
            if key in seen:
                log.warning("live %s: duplicate series %r dropped", m.name, labels)
                continue
            seen.add(key)
            fam.add_metric(key, value)
        return fam


def _live_labels(m: cat.Metric, labels: dict) -> tuple[str, ...]:
    if set(labels) != set(m.labels):
        raise ValueError(f"labels {sorted(labels)}, expected {sorted(m.labels)}")
    out = []
    for name in m.labels:
        v = str(labels[name])
        allowed = cat.DOMAINS[m.domain_of(name)]
        if allowed is not None and v not in allowed:
            raise ValueError(f"unknown {name} {v!r}")
        out.append(v)
    return tuple(out)


def _gather(block: np.ndarray, axis: int, cols: list[list[int]], mode: str) -> np.ndarray:
    """Select the exported space columns along ``axis``, merging groups."""
    if all(len(c) == 1 for c in cols):
        return np.take(block, [c[0] for c in cols], axis=axis)
    reduce = np.max if mode == cat.MAX else np.sum
    parts = [reduce(np.take(block, c, axis=axis), axis=axis, keepdims=True) for c in cols]
    return np.concatenate(parts, axis=axis)
