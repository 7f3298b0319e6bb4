"""Poison batches: a record that killed two workers is set aside, not tried a third time.

The supervisor copies the claim a dead worker was inside into the slot's
supervisor record and counts deaths on it (``engine.supervisor.claims``).
A worker that takes such a claim goes one record at a time, publishing the
position it is at, so a next death names the record; a record that killed
``POISON_AFTER_DEATHS`` workers goes to ``<data-dir>/deadletter/``
(``engine.storage.deadletter``). ``Worker`` mixes this in.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from engine.storage import deadletter
from shm.ring import Claim

log = logging.getLogger("engram.worker")

POISON_AFTER_DEATHS = 2


class PoisonGuard:
    """Needs: inst, slot, metrics (set by ``Worker.__init__``)."""

    def suspect(self, claim: Claim) -> tuple[bool, int | None]:
        """(a worker died inside this claim, the position that killed two workers or None)."""
        sup = self.inst.sup(self.slot)
        ring, pos, deaths = int(sup.crash_ring), int(sup.crash_start), int(sup.crash_count)
        if deaths < 1 or ring != claim.ring or not claim.start <= pos < claim.start + claim.count:
            return False, None
        return True, (pos if deaths >= POISON_AFTER_DEATHS else None)

    def dead_letter(self, claim: Claim, position: int, ids, spaces, vectors) -> None:
        """Set a record that killed two workers aside in <data-dir>/deadletter/ instead of a third try."""
        path = deadletter.append(self.inst.params.data_dir, self.slot, {
            "time": time.time(), "slot": self.slot, "ring": claim.ring, "position": position,
            "reason": f"the worker of slot {self.slot} died {POISON_AFTER_DEATHS} times inserting this "
                      f"observation",
            "spaces": sorted({self.inst.space_name(int(s)) for s in np.unique(spaces)}),
            "ids": [int(i) for i in ids], "vectors": np.asarray(vectors).tolist()})
        self.metrics.inc("deadletter_batches_total", worker_id=self.slot)
        log.error("slot %d: observation %s at ring %d position %d killed %d workers; moved to %s",
                  self.slot, [int(i) for i in ids], claim.ring, position, POISON_AFTER_DEATHS, path)
