"""The shared-memory metric array: one row of float64 cells per writer.

See ``MetricArray`` for the layout and the concurrency contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metrics.cells import CellMap
from metrics.errors import ArrayLayoutError
from shm.errors import LayoutError
from shm.layout import Layout, Field
from shm.segment import Segment

VERSION = 1
HEADER_WORDS = 8
CELL_ALIGN = 8  # cells per row rounded up to 8 float64 = one 64-byte cache line
DEFAULT_PRODUCER_ROWS = 32

# Sanity bounds on header values read from an attached (untrusted) segment.
_MAX_WORKERS = 1 << 16
_MAX_SPACES = 1 << 20
_MAX_PRODUCER_ROWS = 1 << 16

_HEADER_ONLY = Layout(VERSION, [Field("header", "int64", (HEADER_WORDS,))])


@dataclass(frozen=True)
class Rows:
    """Which writer owns which row (see ``MetricArray.rows``)."""

    n_workers: int
    producer_rows: int

    SUPERVISOR = 0
    GATEWAY = 1
    EXPORTER = 2
    FIRST_WORKER = 3

    def worker(self, slot: int) -> int:
        if not 0 <= slot < self.n_workers:
            raise ValueError(f"worker slot {slot} not in 0..{self.n_workers - 1}")
        return self.FIRST_WORKER + slot

    @property
    def producers(self) -> range:
        start = self.FIRST_WORKER + self.n_workers
        return range(start, start + self.producer_rows)

    @property
    def overflow(self) -> int:
        return self.FIRST_WORKER + self.n_workers + self.producer_rows

    @property
    def total(self) -> int:
        return self.overflow + 1


class MetricArray:
    """Counters, gauges and histogram cells of every process, one row each.

    Segment layout (``shm.layout.Layout``, version 1; every field 64-byte aligned)::

        offset  bytes          field
        0       16             preamble: magic u64, layout version u64
        64      64             header int64[8]: n_workers, max_spaces,
                               producer_rows, rows, cells_per_row,
                               catalog fingerprint (crc32), 0, 0
        128     8*R*C          cells float64[R, C]   (R rows, C cells per row)

    Row ``r`` starts at byte ``128 + 8*C*r``; ``C`` is the catalog's cell count
    rounded up to a multiple of 8, so rows never share a cache line. Within a
    row, the cell of ``(metric, labels)`` is ``metrics.cells.CellMap.offset``:
    ``base(metric) + row_major(label indices) * width(metric)``.

    Rows (``MetricArray.rows``)::

        0                         supervisor
        1                         gateway
        2                         exporter
        3 .. 3+N-1                worker slot 0 .. N-1 (by *slot*, not pid: a
                                  restarted worker continues its counters)
        3+N .. 3+N+P-1            producer rows, leased with a kernel-released
                                  byte lock (``metrics.lease``)
        3+N+P                     overflow row, shared by producers that found
                                  no free row; written under a blocking lock

    Concurrency contract: **single writer per row, no lock** (except the
    overflow row, whose writers hold its byte lock around each record). A
    writer's store of one aligned float64 is atomic on the platforms we run
    on, so a reader never sees a torn cell; a reader may see a histogram's
    buckets and count from slightly different moments, which the collector
    absorbs by deriving ``_count`` from the buckets. Readers (the exporter)
    copy the whole ``cells`` array once per scrape and never write.

    The supervisor creates (``create``) and unlinks (``unlink``); every other
    process attaches (``attach``) and closes (``close``). For tests the array
    lives in a plain ``bytearray`` (``in_memory`` / ``format``).
    """

    def __init__(self, buf, *, segment: Segment | None = None):
        """Attach to an already formatted buffer; validates its header."""
        self._segment = segment
        self._buf = buf
        n_workers, max_spaces, producer_rows, rows, cpr, fingerprint = self._read_header(buf)
        self.cellmap = CellMap(n_workers, max_spaces)
        self.row_map = Rows(n_workers, producer_rows)
        expected_cpr = _round_cells(self.cellmap.used_cells)
        if rows != self.row_map.total or cpr != expected_cpr:
            raise ArrayLayoutError(f"metric array header says rows={rows} cells_per_row={cpr}, "
                                   f"expected {self.row_map.total}/{expected_cpr}")
        if fingerprint != self.cellmap.fingerprint:
            raise ArrayLayoutError("metric array was laid out from another catalog "
                                   f"(fingerprint {fingerprint:#x}, ours {self.cellmap.fingerprint:#x})")
        layout = self.layout(n_workers, max_spaces, producer_rows)
        try:
            views = layout.views(buf)
        except LayoutError as exc:
            raise ArrayLayoutError(str(exc)) from exc
        self.header = views["header"]
        self.cells = views["cells"]

    # -- sizing ------------------------------------------------------------
    @staticmethod
    def rows(n_workers: int, producer_rows: int = DEFAULT_PRODUCER_ROWS) -> Rows:
        """Row assignment for a sizing (see the class docstring)."""
        return Rows(n_workers, producer_rows)

    @staticmethod
    def layout(n_workers: int, max_spaces: int, producer_rows: int = DEFAULT_PRODUCER_ROWS) -> Layout:
        cpr = _round_cells(CellMap(n_workers, max_spaces).used_cells)
        rows = Rows(n_workers, producer_rows).total
        return Layout(VERSION, [Field("header", "int64", (HEADER_WORDS,)),
                                Field("cells", "float64", (rows, cpr))])

    @classmethod
    def nbytes(cls, n_workers: int, max_spaces: int, producer_rows: int = DEFAULT_PRODUCER_ROWS) -> int:
        return cls.layout(n_workers, max_spaces, producer_rows).size

    # -- construction ------------------------------------------------------
    @classmethod
    def format(cls, buf, n_workers: int, max_spaces: int,
               producer_rows: int = DEFAULT_PRODUCER_ROWS, *, segment: Segment | None = None) -> "MetricArray":
        """Lay out a zeroed array in ``buf`` and return it."""
        _check_sizing(n_workers, max_spaces, producer_rows)
        cm = CellMap(n_workers, max_spaces)
        layout = cls.layout(n_workers, max_spaces, producer_rows)
        views = layout.views(buf, check=False)
        views["cells"][:] = 0.0
        views["header"][:] = (n_workers, max_spaces, producer_rows,
                              Rows(n_workers, producer_rows).total, _round_cells(cm.used_cells),
                              cm.fingerprint, 0, 0)
        del views
        layout.init(buf)  # magic last: an attacher seeing it sees a full init
        return cls(buf, segment=segment)

    @classmethod
    def in_memory(cls, n_workers: int, max_spaces: int,
                  producer_rows: int = DEFAULT_PRODUCER_ROWS) -> "MetricArray":
        """An array over a private ``bytearray`` (tests, benchmarks)."""
        return cls.format(bytearray(cls.nbytes(n_workers, max_spaces, producer_rows)),
                          n_workers, max_spaces, producer_rows)

    @classmethod
    def create(cls, name: str, n_workers: int, max_spaces: int,
               producer_rows: int = DEFAULT_PRODUCER_ROWS) -> "MetricArray":
        """Create the segment ``name`` (supervisor only)."""
        _check_sizing(n_workers, max_spaces, producer_rows)
        seg = Segment.create(name, cls.nbytes(n_workers, max_spaces, producer_rows))
        try:
            return cls.format(seg.buf, n_workers, max_spaces, producer_rows, segment=seg)
        except BaseException:
            seg.close()
            seg.unlink()
            raise

    @classmethod
    def attach(cls, name: str) -> "MetricArray":
        """Attach to the existing segment ``name`` (any process)."""
        seg = Segment.attach(name)
        try:
            return cls(seg.buf, segment=seg)
        except BaseException:
            seg.close()
            raise

    def close(self) -> None:
        """Drop this process's mapping; never unlinks. Writers built on this
        array keep the mapping alive until they are collected."""
        self.header = self.cells = None
        self._buf = None
        if self._segment is not None:
            try:
                self._segment.close()
            except BufferError:
                pass  # views still exported; the mapping goes with them

    def unlink(self) -> None:
        """Remove the segment name (supervisor only; safe to repeat)."""
        if self._segment is not None:
            self._segment.unlink()

    # -- reading -----------------------------------------------------------
    @property
    def n_workers(self) -> int:
        return self.cellmap.n_workers

    @property
    def max_spaces(self) -> int:
        return self.cellmap.max_spaces

    def snapshot(self) -> np.ndarray:
        """One copy of every row (rows x cells), for a consistent-enough scrape."""
        return self.cells.copy()

    @staticmethod
    def _read_header(buf) -> tuple[int, ...]:
        try:
            header = _HEADER_ONLY.views(buf)["header"]
        except LayoutError as exc:
            raise ArrayLayoutError(f"not a metric array: {exc}") from exc
        values = tuple(int(x) for x in header[:6])
        del header
        n_workers, max_spaces, producer_rows = values[:3]
        try:
            _check_sizing(n_workers, max_spaces, producer_rows)
        except ValueError as exc:
            raise ArrayLayoutError(f"corrupt metric array header: {exc}") from exc
        return values


def _round_cells(n: int) -> int:
    return max(CELL_ALIGN, (n + CELL_ALIGN - 1) // CELL_ALIGN * CELL_ALIGN)


def _check_sizing(n_workers: int, max_spaces: int, producer_rows: int) -> None:
    if not 1 <= n_workers <= _MAX_WORKERS:
        raise ValueError(f"n_workers={n_workers} not in 1..{_MAX_WORKERS}")
    if not 0 <= max_spaces <= _MAX_SPACES:
        raise ValueError(f"max_spaces={max_spaces} not in 0..{_MAX_SPACES}")
    if not 0 <= producer_rows <= _MAX_PRODUCER_ROWS:
        raise ValueError(f"producer_rows={producer_rows} not in 0..{_MAX_PRODUCER_ROWS}")
