"""Where each (metric, label combination) lives inside one row of the array.

The map is a pure function of the catalog and the sizing ``(n_workers,
max_spaces)``, so every process computes the same offsets without talking to
the others. Stored metrics (``source="array"``) are laid out in catalog order::

    base(m0) = 0,  base(m_k+1) = base(m_k) + combos(m_k) * width(m_k)
    combos(m) = product of the sizes of m's label domains
    offset(m, (i_0, …, i_L-1)) = base(m) + (row-major index of i over sizes) * width(m)

Domain sizes: enumerated domains → their number of values; ``worker_id`` →
``n_workers``; ``memory_space`` → ``max_spaces + 1`` (the last index is
``_other``). Width: 1 cell for a counter or gauge; for a histogram
``len(buckets) + 1`` non-cumulative bucket counts (the last is the +Inf
overflow), then ``sum``, then ``count``.

``fingerprint`` summarises the whole map; an attacher compares it with the
one in the segment header, so a process built from another catalog cannot
write into the wrong cells.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from metrics import catalog as cat
from metrics.errors import LabelError, UnknownMetric


@dataclass(frozen=True)
class Dim:
    """One label dimension of one metric."""

    label: str
    domain: str
    size: int
    values: tuple[str, ...] | None  # None: worker_id / memory_space (dynamic)
    index: dict[str, int] | None  # value -> position, for enumerated domains


@dataclass(frozen=True)
class Placement:
    """A stored metric's block of cells in a row."""

    metric: cat.Metric
    base: int
    dims: tuple[Dim, ...]
    combos: int
    width: int
    bounds: np.ndarray  # histogram upper bounds (float64), empty otherwise

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(d.size for d in self.dims)

    @property
    def stop(self) -> int:
        return self.base + self.combos * self.width


class CellMap:
    """Offsets of every stored series, for one sizing of the catalog."""

    def __init__(self, n_workers: int, max_spaces: int, catalog: tuple[cat.Metric, ...] = cat.CATALOG):
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if max_spaces < 0:
            raise ValueError(f"max_spaces must be >= 0, got {max_spaces}")
        self.n_workers = n_workers
        self.max_spaces = max_spaces
        self.other_index = max_spaces  # the `_other` column of memory_space
        self.placements: dict[str, Placement] = {}
        off = 0
        for m in catalog:
            if m.source != cat.ARRAY:
                continue
            dims = tuple(self._dim(m, label) for label in m.labels)
            combos = int(np.prod([d.size for d in dims], dtype=np.int64)) if dims else 1
            p = Placement(m, off, dims, combos, m.width, np.asarray(m.buckets, dtype=np.float64))
            self.placements[m.name] = p
            off = p.stop
        self.used_cells = off
        self.fingerprint = zlib.crc32(self.describe().encode())

    def _dim(self, m: cat.Metric, label: str) -> Dim:
        domain = m.domain_of(label)
        if domain == cat.WORKER_ID:
            return Dim(label, domain, self.n_workers, None, None)
        if domain == cat.MEMORY_SPACE:
            return Dim(label, domain, self.max_spaces + 1, None, None)
        values = cat.DOMAINS[domain]
        return Dim(label, domain, len(values), values, {v: i for i, v in enumerate(values)})

    def describe(self) -> str:
        """One line per stored metric: base, combos, width, dims, buckets."""
        out = [f"n_workers={self.n_workers} max_spaces={self.max_spaces}"]
        for p in self.placements.values():
            dims = ",".join(f"{d.label}:{d.domain}:{d.size}" for d in p.dims)
            out.append(f"{p.base} {p.combos}x{p.width} {p.metric.name} {p.metric.type} "
                       f"{p.metric.agg} [{dims}] {list(p.metric.buckets)}")
        return "\n".join(out)

    def placement(self, name: str) -> Placement:
        p = self.placements.get(name)
        if p is None:
            if name in cat.BY_NAME:
                raise UnknownMetric(f"metric {name!r} is computed at scrape time, not recorded")
            raise UnknownMetric(f"unknown metric {name!r}")
        return p

    def label_index(self, p: Placement, dim: Dim, value) -> int:
        """Position of one label value in its dimension (ValueError names it)."""
        if dim.domain == cat.MEMORY_SPACE:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                if value == cat.OTHER_SPACE:
                    return self.other_index
                raise LabelError(f"{p.metric.name}: memory_space must be a space index (int), "
                                 f"got {value!r}")
            v = int(value)
            # Out of range folds into `_other`: cardinality stays bounded.
            return v if 0 <= v < self.max_spaces else self.other_index
        if dim.domain == cat.WORKER_ID:
            try:
                v = int(value)
            except (TypeError, ValueError):
                v = -1
            if isinstance(value, bool) or not 0 <= v < self.n_workers:
                raise LabelError(f"{p.metric.name}: worker_id {value!r} not in 0..{self.n_workers - 1}")
            return v
        i = dim.index.get(value) if isinstance(value, str) else None
        if i is None:
            raise LabelError(f"{p.metric.name}: unknown {dim.label} {value!r} "
                             f"(one of {', '.join(dim.values)})")
        return i

    def offset(self, name: str, labels: dict) -> int:
        """Cell offset (within a row) of the series ``name{labels}``."""
        p = self.placement(name)
        if len(labels) != len(p.dims) or any(d.label not in labels for d in p.dims):
            raise LabelError(f"{name}: labels {sorted(labels)} given, "
                             f"expected {sorted(d.label for d in p.dims)}")
        flat = 0
        for d in p.dims:
            flat = flat * d.size + self.label_index(p, d, labels[d.label])
        return p.base + flat * p.width
