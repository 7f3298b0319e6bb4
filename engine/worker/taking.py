"""Where a worker's next claim comes from (``Worker`` mixes this in).

In order: claims handed to this slot (a predecessor's that died, or a
parked slot's reassigned by the supervisor; checked every
``ORPHAN_CHECK_S``), then the slot's own rings high → normal → low
(``LaneScheduler``), then stealing about half of the most loaded other ring
whose depth exceeds the steal threshold (any depth when its owner is
absent). A ring whose lock is not free before the worker's deadline (a
stopped producer holds it) is passed over this time (``LockTimeout``).
"""

from __future__ import annotations

import logging

from engine.control.layouts import LANES
from shm.errors import LockTimeout
from shm.ring import Claim

log = logging.getLogger("engram.worker")

ORPHAN_CHECK_S = 0.5
MAX_STEAL_CLAIMS = 32


class ClaimTaking:
    """Needs: inst, slot, own, others, backlog, next_orphan_check, lanes, sizer,
    steal_threshold, metrics, clock (set by ``Worker.__init__``)."""

    def next_claim(self) -> Claim | None:
        if self.backlog:
            return self.backlog.pop(0)
        now = self.clock()
        if now >= self.next_orphan_check:
            self.next_orphan_check = now + ORPHAN_CHECK_S
            self.backlog = self.adopt_orphans()
            if self.backlog:
                return self.backlog.pop(0)
        depths = [r.depth() for r in self.own]
        for lane in self.lanes.order(depths):
            try:
                claim = self.own[lane].claim(self.sizer.size(depths[lane]), self.slot)
            except LockTimeout:
                continue  # its lock holder is stopped: the other lanes, then stealing
            if claim is not None:
                self.lanes.served(lane, depths)
                return claim
        self.backlog = self.steal()
        return self.backlog.pop(0) if self.backlog else None

    def adopt_orphans(self) -> list[Claim]:
        """Open claims recorded under this slot that this process is not working on."""
        out: list[Claim] = []
        for ring in self.inst.rings:
            try:
                if self.slot in ring.open_claimers():
                    out.extend(ring.claims_of(self.slot))
            except LockTimeout:
                continue  # looked at again at the next check
        if out:
            log.info("slot %d: processing %d claim(s) left open by a previous owner", self.slot, len(out))
        return out

    def owner_absent(self, slot: int) -> bool:
        return not self.inst.slot_up(slot, self.clock())

    def steal(self) -> list[Claim]:
        best, best_depth, absent = None, 0, False
        for ring in self.others:
            d = ring.depth()
            if d <= 0:
                continue
            owner_gone = self.owner_absent(ring.ring_id // len(LANES))
            if (d > self.steal_threshold or owner_gone) and d > best_depth:
                best, best_depth, absent = ring, d, owner_gone
        if best is None:
            return []
        total = best_depth if absent else max(1, best_depth // 2)
        per_claim = self.sizer.size(total)
        try:
            claims = best.claim_many(total, per_claim, self.slot, max_claims=MAX_STEAL_CLAIMS)
        except LockTimeout:
            return []
        if claims:
            self.metrics.inc("work_stolen_total", len(claims), worker_id=self.slot)
        return claims
