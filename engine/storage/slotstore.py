"""What makes one worker slot durable: recovery, the log before each commit,
snapshots, and the blocked state when the data directory cannot be written.

``open``: rebuild the shards (``engine.storage.recovery``: newest good snapshot +
the log after it), open the log at a generation above every snapshot
(``engine.storage.walgen.WalLog``), set up snapshots (``engine.storage.snapshotter``).

``log(claim, todo)``: append the claim's batches (one record per space and
kind, with their stamps); the worker commits the claim only when this
returns True. The slot's *floor* (``IdTable.floors[slot]``) is the smallest
stamp in its log files still on disk: a restart replays those, so the
supervisor keeps every tombstone at or above it (``engine.ledger.tombstones``). If an append fails (ENOSPC, EFBIG, EIO)
the log has already been cut back to its last complete record (``WalWriter``),
so no torn record precedes later good ones. The slot is then *blocked*: the
claim stays uncommitted (its records are in the shard already, and in the
ring, so a crash now still loses nothing), the errno goes to
``LiveRecord.unwritable`` so producers refuse new work
(``engine.control.pressure.unwritable``), the ``data_dir_unwritable`` gauge is 1,
and ``retry`` appends the rest every ``UNWRITABLE_RETRY_S`` until it
succeeds, then commits the claim and clears the state.

Single owner: the worker of the slot.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

from engine.storage import ledgerfile, recovery
from engine.control.instance import Instance
from engine.config.hooks import NONE as NO_HOOKS, Hooks
from engine.storage.snapshotter import Snapshotter
from engine.storage.walgen import WalLog
from shm.errors import LockTimeout
from shm.idtable import NO_FLOOR
from shm.ring import Claim

log = logging.getLogger("engram.worker")

UNWRITABLE_RETRY_S = 0.5
# Tombstones waiting in the identity table past which a slot whose log holds
# them back snapshots early (engine.storage.snapshotter.URGENT_EVERY_S).
TOMBSTONES_URGENT = 1024


@dataclass
class Blocked:
    """A claim inserted but not yet logged because the log could not be written."""
    claim: Claim
    todo: list  # [(space, kind, ids, stamps, vectors)] still to append: views into the claimed ring range
    since: float
    retry_at: float


class SlotStore:
    def __init__(self, inst: Instance, slot: int, shards, spaces, metrics, clock=time.monotonic,
                 snapshot_cpus: set[int] | None = None, hooks: Hooks = NO_HOOKS, book=None):
        self.inst = inst
        self.book = book  # engine.ledger.book.Book of the slot (recovery applies through it)
        self.hooks = hooks
        self.slot = slot
        self.shards = shards
        self.spaces = spaces
        self.metrics = metrics
        self.clock = clock
        self.snapshot_cpus = snapshot_cpus  # where the snapshot child may run (None: where the worker runs)
        self.live = inst.live(slot)
        self.wal: WalLog | None = None
        self.snapshots: Snapshotter | None = None
        self.blocked: Blocked | None = None
        self.gen_floor: dict[int, int] = {}  # log generation -> smallest stamp appended to it

    def open(self, publish, heartbeat, progress=lambda share: None) -> None:
        """Recover the shards (``publish(space, count)`` as they fill), open the log."""
        p = self.inst.params
        meta = {"slot": self.slot, "dim": p.dim, "metric": p.metric}
        rec = recovery.recover(p.data_dir, self.slot, meta, self.shards, self.spaces.register, publish,
                               self.metrics, heartbeat, self.hooks.recovery_delay_s, progress, self.book)
        self.gen_floor = dict(rec.gen_floor)
        self.wal = WalLog(p.data_dir, self.slot, p.fsync, rec.first_generation)
        table, shards, name_of = self.inst.ids, self.shards, self.inst.space_name
        self.snapshots = Snapshotter(p.data_dir, self.slot, self.shards, self.inst.space_name, self.wal,
                                     rec.entries, meta, self.metrics, p.snapshot_interval,
                                     p.snapshot_wal_bytes, rec.uncovered_bytes, self.snapshot_cpus,
                                     self.clock, self.hooks.snapshot_pause_s,
                                     lambda: ledgerfile.collect(table, self.slot, name_of, shards.dead))
        self.snapshots.on_covered = self._covered
        self.snapshots.urgent = self.holds_tombstones
        self._publish_floor()
        self.metrics.set("wal_size_bytes", float(self.wal.total_bytes()), worker_id=self.slot)

    # -- appending ------------------------------------------------------------------
    def log(self, claim: Claim, todo: list) -> bool:
        """Append each (space, kind, ids, stamps, vectors) of ``todo``, removing
        it once logged. False if an append failed: the slot is then blocked on
        this claim."""
        while todo:
            space, kind, ids, stamps, vectors = todo[0]
            if not len(ids):
                todo.pop(0)
                continue
            try:
                nbytes, synced = self.wal.append(self.inst.space_name(space), ids, vectors, stamps, kind)
            except OSError as exc:
                self._block(claim, todo, exc)
                return False
            todo.pop(0)
            low = int(stamps.min())
            gen = self.wal.generation
            if low < self.gen_floor.get(gen, NO_FLOOR):
                self.gen_floor[gen] = low
                self._publish_floor()
            self.metrics.inc("wal_appends_total", worker_id=self.slot)
            self.metrics.inc("wal_bytes_total", nbytes, worker_id=self.slot)
            self.snapshots.appended(nbytes)
            self._record_sync(synced)
        return True

    def _covered(self, wal_from: int) -> None:
        """Log generations below ``wal_from`` were deleted: their stamps no longer replay."""
        for gen in [g for g in self.gen_floor if g < wal_from]:
            del self.gen_floor[gen]
        self._publish_floor()

    def holds_tombstones(self) -> bool:
        """Many tombstones wait and this slot's log files are one reason:
        nothing at or above the smallest stamp they hold can be dropped."""
        table = self.inst.ids
        return int(self.inst.ids.floors[self.slot]) != NO_FLOOR and \
            table.used - int(table.held.sum()) >= TOMBSTONES_URGENT

    def _publish_floor(self) -> None:
        self.inst.ids.floors[self.slot] = min(self.gen_floor.values(), default=NO_FLOOR)

    def _block(self, claim: Claim, todo: list, exc: OSError) -> None:
        now = self.clock()
        self.live.unwritable = exc.errno or errno.EIO
        if self.blocked is not None:
            self.blocked.retry_at = now + UNWRITABLE_RETRY_S
            return
        self.blocked = Blocked(claim, todo, now, now + UNWRITABLE_RETRY_S)
        # The insert is done: a death from here on is not this claim's fault (poison detection).
        self.live.claim_ring = -1
        self.metrics.inc("batch_failures_total", worker_id=self.slot, error_type="wal_error")
        self.metrics.set("data_dir_unwritable", 1, worker_id=self.slot)
        log.error("slot %d: cannot write the write-ahead log (%s); admission stops until it can, recall "
                  "keeps working, retrying every %.1fs", self.slot, exc, UNWRITABLE_RETRY_S)

    def retry(self) -> bool:
        """Append what a blocked claim still lacks; on success commit it and unblock."""
        b = self.blocked
        if not self.log(b.claim, b.todo):
            return False
        try:
            self.inst.rings[b.claim.ring].commit(b.claim)
        except LockTimeout:
            return False  # logged now; the commit is tried again at the next retry
        self.blocked = None
        self.live.unwritable = 0
        self.metrics.set("data_dir_unwritable", 0, worker_id=self.slot)
        log.warning("slot %d: write-ahead log writable again after %.1fs; admission resumes", self.slot,
                    self.clock() - b.since)
        return True

    def _record_sync(self, synced: float | None) -> None:
        if synced is not None:
            self.metrics.observe("wal_fsync_seconds", synced)
            self.metrics.set("wal_size_bytes", float(self.wal.total_bytes()), worker_id=self.slot)

    def idle(self) -> None:
        """Called when the worker has nothing to do: an ``interval`` log is synced."""
        try:
            self._record_sync(self.wal.tick())
        except OSError as exc:  # the data stays unsynced (dirty): the next tick or append tries again
            log.warning("slot %d: write-ahead log sync failed: %s", self.slot, exc)

    # -- stopping -------------------------------------------------------------------
    def finish(self) -> None:
        """Graceful stop: log a blocked claim if the disk allows, then a final snapshot."""
        if self.blocked is not None and not self.retry():
            log.error("slot %d: stopping with %d observation(s) inserted but not logged (data directory "
                      "unwritable); their claim stays uncommitted", self.slot, self.blocked.claim.count)
            return
        self.snapshots.final()

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.abort()
        if self.wal is not None:
            self.wal.close()
