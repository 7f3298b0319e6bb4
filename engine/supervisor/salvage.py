"""Carry acknowledged observations over from a previous run that was killed.

If a supervisor dies without a graceful stop (``kill -9`` of the process
group, an OOM kill), its shared memory outlives it: the rings still hold
every acknowledged observation that was not yet committed. The next start of
the same instance name reads them out before removing the dead run's
segments, and puts them back (``restore``) once the new rings exist:

* records still waiting (never claimed) go back into the ring of the same
  (slot, lane): nobody had inserted them;
* records a worker had claimed go back into that worker's slot, *claimed by
  that slot*, so its new worker processes them after replaying its log and
  no other worker can steal them. The same id inserted twice into one shard
  is an update, so a batch that was also logged before the crash is not
  duplicated;
* records of committed claims are skipped: they are in their slot's log.

Only a run of the same shape (worker count, dimension) is carried over; the
data-dir manifest already refuses any other. The old segment is untrusted
input: every counter is bounds-checked by the ring code, and a layout error
drops the carry-over with a warning instead of failing the start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from engine.config import valid_space
from engine.control.layouts import LANES
from engine.control.records import READER
from engine.control.instance import Instance
from engine.control.spaces import SpaceRegistry
from shm.errors import LayoutError, SegmentMissing

log = logging.getLogger("engram.supervisor")


@dataclass
class Leftover:
    slot: int
    lane: int
    claimed_by: int | None  # the slot that had claimed them, or None if waiting
    space: str
    ids: np.ndarray
    vectors: np.ndarray
    stamps: np.ndarray | None = None  # each record's stamp (engine.ledger); None: all 0
    kinds: np.ndarray | None = None   # 0 observe, 1 forget; None: all observe

    def __post_init__(self):
        if self.stamps is None:
            self.stamps = np.zeros(len(self.ids), np.uint64)
        if self.kinds is None:
            self.kinds = np.zeros(len(self.ids), np.uint8)


def collect(name: str, slots: int, dim: int) -> list[Leftover]:
    """Copy the uncommitted records out of a dead run's rings (empty if none)."""
    try:
        old = Instance.attach(name, READER)
    except (SegmentMissing, LayoutError) as exc:
        log.warning("dead run of %r left shared memory that cannot be read (%s); its queued "
                    "observations are dropped", name, exc)
        return []
    try:
        if old.slots != slots or old.dim != dim:
            queued = sum(old.queued_by_lane())
            if queued:
                log.warning("dead run of %r had %d worker(s) at dim %d; %d queued observation(s) "
                            "cannot be carried over", name, old.slots, old.dim, queued)
            return []
        return collect_from(old)
    except LayoutError as exc:
        log.warning("dead run of %r: corrupt ring (%s); its queued observations are dropped", name, exc)
        return []
    finally:
        old.close()


def collect_from(inst: Instance) -> list[Leftover]:
    """Copy every uncommitted record out of ``inst``'s rings (a dead run's, or
    this run's own once its workers are gone: ``engine.supervisor.spill``).
    Raises LayoutError on a ring whose counters are out of bounds."""
    slots = inst.slots
    out: list[Leftover] = []
    names = inst.space_names()
    invalid: dict[str, int] = {}  # space name that does not validate -> observations dropped
    for ring in inst.rings:
        slot, lane = divmod(ring.ring_id, len(LANES))
        where, owner = ring.uncommitted()
        spaces = ring.spaces[where]
        for claimer in np.unique(owner):
            for space in np.unique(spaces[owner == claimer]):
                name_of = names.get(int(space))
                if not name_of or not -1 <= claimer < slots:
                    continue  # untrusted bytes: an unknown space or slot is dropped
                sel = where[(owner == claimer) & (spaces == space)]
                if not valid_space(name_of):
                    # never mapped onto a valid space, whatever its bytes resemble
                    invalid[name_of] = invalid.get(name_of, 0) + len(sel)
                    continue
                out.append(Leftover(slot, lane, None if claimer < 0 else int(claimer), name_of,
                                    ring.ids[sel].copy(), ring.vectors[sel].copy(), ring.stamps[sel].copy(),
                                    ring.kinds[sel].copy()))
    for bad, n in invalid.items():
        log.error("run of %r: %d queued observation(s) name the memory space %.80r, which is not a "
                  "valid name; dropped, not carried over into any space", inst.name, n, bad)
    return out


def restore(inst: Instance, leftovers: list[Leftover], source: str = "left queued by a dead run") -> int:
    """Put carried-over records into the new rings; returns how many were restored."""
    spaces = SpaceRegistry(inst)
    restored = 0
    groups: dict[tuple, list[Leftover]] = {}
    for item in leftovers:
        target = item.claimed_by if item.claimed_by is not None else item.slot
        groups.setdefault((target, item.lane, item.claimed_by is not None, item.space), []).append(item)
    # Per ring, claimed groups first: claim_many takes the oldest pending records.
    for (target, lane, claimed, space) in sorted(groups, key=lambda k: (k[0], k[1], not k[2])):
        items = groups[(target, lane, claimed, space)]
        idx = spaces.register(space)
        ids = np.concatenate([x.ids for x in items])
        vectors = np.concatenate([x.vectors for x in items])
        stamps = np.concatenate([x.stamps for x in items])
        kinds = np.concatenate([x.kinds for x in items])
        ring = inst.ring(target, lane)
        n = 0
        for kind in np.unique(kinds):  # each record keeps its stamp: order among operations is kept
            sel = kinds == kind
            n += ring.enqueue(ids[sel], vectors[sel], idx, time.monotonic(), stamps[sel], int(kind))
        if claimed and n:
            ring.claim_many(n, n, target)  # still the slot's claim: not stealable
        restored += n
        if n < len(ids):
            log.error("could not carry over %d observation(s) of %r: ring full", len(ids) - n, space)
    if restored:
        log.warning("carried over %d acknowledged observation(s) %s", restored, source)
    return restored
