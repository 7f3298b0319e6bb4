"""Producer rows: how a producer process gets a row of its own.

Producers (``engine.connect`` clients, the load generator) come and go, so
they do not have fixed rows. A producer leases one of the array's producer
rows by taking byte ``r`` of a lock file dedicated to metric rows with
``LockFile.try_acquire(r)``; it keeps the lock for its lifetime and the kernel
drops it when the process dies, however it dies. The next producer that
takes the row continues its counters, so exported counters never go down.

If every producer row is leased, the producer writes into the shared overflow
row through a ``LockedMetricWriter``, which holds the overflow row's byte
(blocking) around each record call.

The lock file is ``lock_path``, chosen by the engine (e.g. beside the other
lock files of the instance); byte ``r`` guards row ``r`` and nothing else
may use those bytes. A gauge written from a producer row keeps its last value
after the producer dies: producers should record counters and histograms.
"""

from __future__ import annotations

from metrics.array import MetricArray
from metrics.writer import LockedMetricWriter, MetricWriter
from shm.lock import LockFile


class ProducerRowLease:
    """A producer's claim on one producer row, or on the overflow row.

    ``row`` is the row; ``shared`` is True for the overflow row. ``writer``
    is the writer to record with. ``release()`` gives the row back (also on
    process exit, by the kernel).
    """

    def __init__(self, array: MetricArray, lock_path: str):
        self.array = array
        self._lock = LockFile.open(lock_path)
        rows = array.row_map
        self.row = rows.overflow
        self.shared = True
        for r in rows.producers:
            if self._lock.try_acquire(r):
                self.row = r
                self.shared = False
                break
        self.writer: MetricWriter = (LockedMetricWriter(array, self.row, self._lock) if self.shared
                                     else MetricWriter(array, self.row))
        self._held = not self.shared

    def release(self) -> None:
        """Give the row back (idempotent)."""
        if self._held:
            self._held = False
            self._lock.release(self.row)

    def __enter__(self) -> "ProducerRowLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        kind = "overflow" if self.shared else "own"
        return f"<ProducerRowLease row={self.row} ({kind})>"
