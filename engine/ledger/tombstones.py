"""Dropping tombstones that no older operation can still meet.

A forget leaves a tombstone in the identity table (its key, its stamp, the
slot that applied it) so that an older observe of the same key, still
queued or still in a log that a restart replays, loses when it arrives.
Once nothing older can arrive the tombstone has done its work; keeping it
would grow the table with every forgotten id.

Nothing older can arrive once the tombstone's stamp is below the *floor*:

* the smallest stamp of every record still in a ring (queued or claimed;
  ``Ring.pending_floor``), and
* every slot's log floor, the smallest stamp in its log files still on
  disk (``IdTable.floors``, kept by ``engine.storage.slotstore``), and
* the present minus ``MARGIN_NS``: a producer stamps a call a moment before
  its records reach a ring.

A slot that has not published its floor yet in this run (still recovering,
or parked before it could) has floor 0, which holds every tombstone back:
its log may hold older operations. A slot that stopped running keeps the
floor it published, which stays true of its log files. The
supervisor runs this (``tick``) between its other steps; it looks at
``CHUNK`` entries per tick, so a pass over a large table is spread out, and
it drops at most ``MAX_DROP`` per tick, so writers wait on the table lock
for little at a time.
"""

from __future__ import annotations

import numpy as np

MARGIN_NS = 1_000_000_000
CHUNK = 1 << 18
MAX_DROP = 4096
INTERVAL_S = 0.2


class Tombstones:
    def __init__(self, inst, now_stamp, metrics=None):
        self.inst = inst
        self.now_stamp = now_stamp  # () -> the present as a stamp (engine.ledger.stamps)
        self.metrics = metrics
        self.cursor = 0
        self.next_at = 0.0

    def count(self) -> int:
        table = self.inst.ids
        return max(0, table.used - int(table.held.sum()))

    def floor(self) -> int:
        floors = [self.now_stamp() - MARGIN_NS, int(self.inst.ids.floors.min())]
        for ring in self.inst.rings:
            low = ring.pending_floor()
            if low is not None:
                floors.append(low)
        return min(floors)

    def tick(self, now: float) -> int:
        """One step; returns how many tombstones it dropped."""
        table = self.inst.ids
        if self.metrics is not None:
            self.metrics.set("identity_table_entries", float(table.used))
            self.metrics.set("identity_table_capacity", float(table.capacity * 3 // 4))
        if now < self.next_at or not self.count():
            return 0
        self.next_at = now + INTERVAL_S
        floor = self.floor()
        positions, self.cursor = table.removed_below(floor, self.cursor, CHUNK)
        if not len(positions):
            return 0
        dropped = table.remove(np.asarray(positions[:MAX_DROP]), floor)
        if dropped and self.metrics is not None:
            self.metrics.inc("tombstones_dropped_total", dropped)
        return dropped
