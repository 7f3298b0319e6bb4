"""What the supervisor does with the claims of a worker that died.

Poison batches: a worker publishes the claim it works on in its live record
(``claim_ring``/``claim_start``, -1 when none). When it dies, ``note_death``
copies that claim into the slot's supervisor record and counts consecutive
deaths inside the same claim; the next worker of the slot dead-letters a
record that has killed two workers instead of trying a third time.

Parked slots: ``hand_over`` gives a parked slot's open claims to a running
slot, except the one its last worker died inside (see there).
"""

from __future__ import annotations

import logging

from engine.control.instance import Instance
from engine.control.records import RUNNING
from shm.errors import LockTimeout

log = logging.getLogger("engram.supervisor")


def note_death(inst: Instance, slot: int) -> None:
    """Count consecutive worker deaths on the same claim (poison-batch detection)."""
    sup, live = inst.sup(slot), inst.live(slot)
    ring, start = live.claim_ring, live.claim_start
    if ring < 0:
        sup.crash_count = 0
    elif (ring, start) == (sup.crash_ring, sup.crash_start):
        sup.crash_count += 1
    else:
        sup.crash_ring, sup.crash_start, sup.crash_count = ring, start, 1
    if ring >= 0:
        log.error("worker slot %d died while processing claim at ring %d position %d (%d time(s) in a row)",
                  slot, ring, start, sup.crash_count)


def hand_over(inst: Instance, slot: int, slots: list[int]) -> int:
    """Give a parked slot's open claims to a running slot (processed when it is idle).

    Except the claim its last worker died inside: that one may already be in
    the slot's shard and write-ahead log (a death between the append and the
    commit), and another slot inserting it too would put the same ids in two
    shards. It stays with the slot, whose next worker (after the parking)
    replays its log and processes it again in the same shard, where a second
    insert of an id is an update. Returns how many claims moved."""
    heirs = [s for s in slots if s != slot and inst.sup(s).state == RUNNING]
    if not heirs:
        return 0  # the slot's own replacement processes them when it is unparked
    heir = heirs[slot % len(heirs)]
    live = inst.live(slot)
    ring, pos = live.claim_ring, live.claim_start
    moved = 0
    for r in inst.rings:
        try:
            moved += len(r.reassign(slot, heir, keep=pos if r.ring_id == ring else None))
        except LockTimeout:
            log.error("ring %d stayed locked: the claims of parked slot %d on it stay with it", r.ring_id, slot)
    if moved:
        log.info("handed %d open claim(s) of parked slot %d to slot %d%s", moved, slot, heir,
                 f" (the claim at ring {ring} position {pos} it died in stays with it)" if ring >= 0 else "")
    return moved
