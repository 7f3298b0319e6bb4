"""One worker process: the owner of one slot's rings and HNSW shards.

Loop (one iteration)::

    heartbeat → answer pending recall queries → take work → insert → commit
                                              └─ none: sleep on the wake signal

Inserting a batch is split into slices with pending recall queries answered
between them: about ``--query-slice-ms`` (2 ms) while queries are arriving
(one was answered in the last ``QUERY_RECENT_S``), about 5 ms
(``QUERY_CHECK_S``) otherwise, so a recall waits for a short slice and an
ingest without queries pays for few slice boundaries.

Forget and upsert (``engine.worker.ledgering``, ``engine.ledger``): each
claim's operations go through the identity table before the shard (newest
stamp wins), recall keeps only what the table says this slot holds, and a
shard past ``--compact-ratio`` is rebuilt in slices between batches.

Taking work (``engine.worker.taking``): claims handed to this slot, its own
rings high → normal → low, then stealing. Stolen records go into this
slot's own shard for their space. A claim a worker died inside is handled
record by record (``engine.worker.poison``). Recovery at start heartbeats
from a thread (``engine.worker.recovering``).

Durability (``start(durable=True)``, ``engine.storage.slotstore.SlotStore``): shards
rebuilt from the newest good snapshot and the log after it, each batch
logged before its claim is committed, snapshots forked between batches.
While the log cannot be written (disk full) the worker only answers recall
queries and lets the store retry the append (``step_blocked``).

Set up after the fork (STYLE §3): pinning, signals, attaching to shared
memory happen in ``main``, never in the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np

from engine import child, identity
from engine.config.hooks import NONE as NO_HOOKS, Hooks
from engine.storage.slotstore import SlotStore
from engine.control.layouts import LANES
from engine.control.records import WORKER
from engine.control.instance import Instance
from engine.control.query import serve_pending
from engine.worker.recovering import Recovering
from engine.control.recallstate import live_settings
from engine.recallhealth.probeset import ProbeShard
from engine.worker.poison import PoisonGuard
from engine.worker.scheduler import BatchSizer, LaneScheduler
from engine.worker.taking import ClaimTaking
from engine.errors import ResizeError
from engine.worker.shards import ShardSet
from engine.ledger.book import FORGET, Book, tombstone
from engine.ledger.compaction import Compactor
from engine.worker.ledgering import Ledgering, groups_of
from engine.control.spaces import SpaceRegistry
from metrics.writer import MetricWriter, NullWriter
from shm.errors import LockTimeout
from shm.idtable import TableFull
from shm.ring import Claim

log = logging.getLogger("engram.worker")

IDLE_WAIT_S = 0.05
UTILIZATION_WINDOW_S = 1.0
# Inside a batch, the worker answers pending recall queries every this many
# seconds of inserting (it splits add_items into slices of that length), so
# a recall waits about this long, not a whole --batch-budget-ms batch.
QUERY_CHECK_S = 0.005
# Queries count as "arriving" this long after the last one was answered.
QUERY_RECENT_S = 1.0
class Worker(ClaimTaking, PoisonGuard, Ledgering):
    def __init__(self, inst: Instance, slot: int, shards: ShardSet, clock=time.monotonic,
                 hooks: Hooks = NO_HOOKS, probe_shard: ProbeShard | None = None):
        p = inst.params
        self.inst = inst
        self.hooks = hooks
        self.slot = slot
        self.shards = shards
        self.clock = clock
        self.spaces = SpaceRegistry(inst)
        self.lanes = LaneScheduler()
        self.sizer = BatchSizer(p.batch_min, p.batch_max, p.batch_budget_ms / 1000.0)
        self.steal_threshold = p.steal_threshold
        self.live = inst.live(slot)
        self.counts = inst.own_shard_counts()
        self.own = [inst.ring(slot, lane) for lane in range(len(LANES))]
        self.others = [r for r in inst.rings if r.ring_id // len(LANES) != slot]
        self.backlog: list[Claim] = []
        self.uncommitted: list = []  # (ring, claim) whose commit met a lock past its deadline
        self.next_orphan_check = 0.0
        self.metrics = NullWriter() if p.no_metrics else \
            MetricWriter(inst.metrics, inst.metrics.row_map.worker(slot))
        self.store: SlotStore | None = None  # the log and snapshots (start(durable=True))
        self.busy_s = 0.0
        self.query_s = 0.0  # time answering queries inside batches (kept out of batch sizing)
        self.last_query_at = float("-inf")  # clock() of the last answered recall query
        self.query_slice_s = p.query_slice_ms / 1000.0
        self.window_start = clock()
        self.book = Book(inst.ids, slot)  # forget and upsert (engine.ledger)
        self.published = np.zeros(inst.params.max_spaces, np.int64)  # index_vectors as last published
        self.counts_due = 0.0
        self.compactor = Compactor(shards, self.book, p.compact_ratio, self.metrics, clock, inst.space_name)
        # Recall health: the reserved probe shard answers PROBE_SPACE (engine.recallhealth.probeset).
        self.search = (probe_shard or ProbeShard.for_params(p)).route(self.held_search)

    # -- lifecycle ---------------------------------------------------------
    def start(self, durable: bool = False, snapshot_cpus: set[int] | None = None) -> None:
        """Publish empty shards; with ``durable``, rebuild them from the data
        directory and open the log; then go live."""
        self.live.claim_ring = -1
        self.live.unwritable = 0
        self.counts[:] = 0
        for space in self.inst.space_names():
            self.metrics.set("index_vectors", 0, memory_space=space)
        self.metrics.set("data_dir_unwritable", 0, worker_id=self.slot)
        if durable:
            def publish(space: int, count: int) -> None:
                self.counts[space] = count
            self.store = SlotStore(self.inst, self.slot, self.shards, self.spaces, self.metrics, self.clock,
                                   snapshot_cpus, self.hooks, self.book)
            with Recovering(self.live, self.clock) as rec:
                self.store.open(publish, self.heartbeat, rec.progress)
            for space in np.flatnonzero(self.counts):
                self.publish_counts(int(space))
        self.heartbeat()
        # Written last: the supervisor sees the slot running once this pid shows.
        self.live.pid = os.getpid()

    def heartbeat(self) -> None:
        self.live.heartbeat = self.clock()

    def stopping(self) -> bool:
        return bool(self.inst.header.stop)

    def step(self) -> bool:
        """One iteration; returns True if it did any work."""
        self.heartbeat()
        self.report_utilization()
        self.publish_changed()
        if self.store is not None:
            if self.store.blocked is not None:
                return self.step_blocked()
            # between batches: reap a finished child, start one if due (not while a
            # shard is rebuilt: what it took meanwhile is in the new index only)
            self.store.snapshots.poll(self.compactor.job is None)
        if self.uncommitted:
            self.retry_commits()
        t0 = self.clock()
        answered = self.answer_queries()
        # Live settings (the supervisor's auto-tuner), read before each batch.
        self.sizer.budget_s, self.steal_threshold = live_settings(self.inst) or (self.sizer.budget_s,
                                                                                self.steal_threshold)
        claim = self.next_claim()
        t_batch = time.perf_counter()
        if claim is not None:
            self.process(claim)
        compacted = self.compact(time.perf_counter() - t_batch)
        worked = claim is not None or bool(answered) or compacted
        self.busy_s += self.clock() - t0 if worked else 0.0
        if not worked:
            self.sleep()
        return worked

    def answer_queries(self) -> int:
        """Answer recall requests addressed to this slot (between insert slices)."""
        t0 = time.perf_counter()
        answered = serve_pending(self.inst, self.slot, self.search)
        if answered:
            self.query_s += time.perf_counter() - t0
            self.last_query_at = self.clock()
        return answered

    def report_utilization(self) -> None:
        """Busy time over wall time, published about once a second."""
        now = self.clock()
        wall = now - self.window_start
        if wall >= UTILIZATION_WINDOW_S:
            self.metrics.set("worker_utilization_ratio", min(1.0, self.busy_s / wall), worker_id=self.slot)
            self.busy_s, self.window_start = 0.0, now

    # -- doing work ----------------------------------------------------------
    def process(self, claim: Claim) -> None:
        ring = self.inst.rings[claim.ring]
        priority = LANES[claim.ring % len(LANES)]
        ids, spaces, times, vectors = ring.view(claim)
        kinds, stamps = ring.view_ops(claim)
        positions = None
        suspect, poison = self.suspect(claim)
        if suspect:
            # A worker died on this claim: go one record at a time so the next
            # death names the record; a record that killed two is set aside.
            positions = np.arange(claim.start, claim.start + claim.count)
            if poison is not None:
                k = poison - claim.start
                self.dead_letter(claim, poison, ids[k:k + 1], spaces[k:k + 1], vectors[k:k + 1])
                # Its operation reached the identity table before it killed the
                # insert: set aside, it holds no vector here, so its key is not live.
                self.book.table.apply(int(spaces[k]), ids[k:k + 1], stamps[k:k + 1], tombstone(self.slot))
                keep = positions != poison
                ids, spaces, times, vectors, positions = (ids[keep], spaces[keep], times[keep], vectors[keep],
                                                          positions[keep])
                kinds, stamps = kinds[keep], stamps[keep]
        self.live.claim_ring, self.live.claim_start = claim.ring, claim.start
        started = time.monotonic()
        t0, q0 = time.perf_counter(), self.query_s
        groups = groups_of(spaces, kinds)
        todo = []
        try:
            for space, kind, sel in groups:
                todo.append(self._apply(space, kind, ids[sel], stamps[sel], vectors[sel],
                                        None if positions is None else positions[sel]))
        except (LockTimeout, TableFull) as exc:
            # The identity table stayed locked (its holder is stopped), or is
            # full (producers keep room for every queued record, so only a
            # carried-over backlog can get here): try this claim again later;
            # what was applied applies again harmlessly.
            if isinstance(exc, TableFull):
                log.error("slot %d: %s; claim kept for a later try", self.slot, exc)
            self.backlog.insert(0, claim)
            self.live.claim_ring = -1
            return
        self.sizer.record(claim.count, time.perf_counter() - t0 - (self.query_s - q0))
        done = time.monotonic()
        m = self.metrics
        for space, kind, sel in groups:
            if kind == FORGET:
                m.inc("forgets_total", len(ids[sel]), memory_space=space)
                continue
            waited = times[sel]
            m.inc("observations_total", len(waited), memory_space=space, priority=priority)
            m.observe_many("observation_latency_seconds", done - waited, memory_space=space)
        for space in {g[0] for g in groups}:
            self.publish_counts(space)
        if len(times):
            m.observe_many("queue_wait_time_seconds", started - times, priority=priority)
        m.inc("batches_processed_total", worker_id=self.slot)
        m.observe("batch_size", claim.count, worker_id=self.slot)
        if self.store is not None:
            # Logged before the commit: from here a crash loses nothing (DESIGN §6).
            if not self.store.log(claim, todo):
                return  # blocked: the store commits it once the log takes it
        self.commit(ring, claim)

    def commit(self, ring, claim: Claim) -> None:
        """Commit, or keep the claim for a later try when the ring's lock stays
        taken (a stopped producer holds it): the batch is inserted and logged,
        so the worker goes on beating, answering recalls and taking other
        rings' work meanwhile; a crash before the commit replays it as an update."""
        try:
            ring.commit(claim)
        except LockTimeout:
            self.uncommitted.append((ring, claim))
        self.live.claim_ring = -1

    def retry_commits(self) -> None:
        waiting, self.uncommitted = self.uncommitted, []
        for ring, claim in waiting:
            self.commit(ring, claim)

    def step_blocked(self) -> bool:
        """One iteration while the log cannot be written: answer queries, retry when due."""
        answered = self.answer_queries()
        now = self.clock()
        retry_at = self.store.blocked.retry_at
        if now >= retry_at:
            return self.store.retry() or bool(answered)
        if not answered and self.inst.wake[self.slot].wait(min(IDLE_WAIT_S, retry_at - now)):
            self.inst.wake[self.slot].drain()  # a recall query (producers are refused meanwhile)
        return bool(answered)

    def _insert(self, space: int, ids: np.ndarray, vectors: np.ndarray, positions=None) -> None:
        """Insert into the space's shard in ~5 ms slices (queries answered between),
        or one record at a time, published in ``LiveRecord.claim_start``, for a suspect claim."""
        try:
            lo = 0
            while lo < len(ids):
                step = 1 if positions is not None else self.slice_items(len(ids))
                if lo:
                    self.heartbeat()
                    self.answer_queries()
                if positions is not None:
                    self.live.claim_start = positions[lo]
                if self.hooks.crash_on_id is not None and self.hooks.crash_on_id in ids[lo:lo + step]:
                    os._exit(70)  # test hook: behave like a batch that crashes its worker
                self.counts[space] = self.shards.insert(space, ids[lo:lo + step], vectors[lo:lo + step])
                lo += step
        except ResizeError:
            self.metrics.inc("batch_failures_total", worker_id=self.slot, error_type="resize_error")
            raise
        except Exception:
            self.metrics.inc("batch_failures_total", worker_id=self.slot, error_type="insert_error")
            raise

    def slice_items(self, n: int) -> int:
        """Records in the next insert slice: about ``--query-slice-ms`` of work
        while recall queries are arriving, ``QUERY_CHECK_S`` otherwise."""
        per_item = self.sizer.seconds_per_item
        if not per_item:
            return n
        recent = self.clock() - self.last_query_at < QUERY_RECENT_S
        return max(1, int((self.query_slice_s if recent else QUERY_CHECK_S) / per_item))

    def sleep(self) -> None:
        if self.store is not None:
            self.store.idle()
        self.live.sleeping = 1
        # Re-check after raising the flag: a producer that enqueued before it
        # saw the flag did not post (closes the lost-wake-up window).
        if any(r.depth() for r in self.own):
            self.live.sleeping = 0
            return
        woken = self.inst.wake[self.slot].wait(IDLE_WAIT_S)
        self.live.sleeping = 0
        if woken:
            self.inst.wake[self.slot].drain()


def pin(cpu: int | None) -> None:
    if cpu is not None and cpu >= 0:
        os.sched_setaffinity(0, {cpu})


def main(slot: int, name: str, cpu: int | None, inherited: list[int] = (),
         supervisor_pid: int = 0, hooks: Hooks = NO_HOOKS) -> None:
    """Entry point in the forked child."""
    child.prepare(inherited, supervisor_pid)
    identity.become("worker", name, slot, cpu)
    # A file-size limit (RLIMIT_FSIZE) must fail the write with EFBIG, which
    # the worker handles like a full disk, not kill it with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Before pinning: the supervisor's CPUs, where a snapshot child may run
    # so that it need not take its time from this worker's CPU alone.
    usable = os.sched_getaffinity(0)
    pin(cpu)
    inst = Instance.attach(name, WORKER, slot)
    p = inst.params
    shards = ShardSet(p.dim, p.metric, p.hnsw_m, p.ef_construction, p.ef_search,
                      p.shard_initial_capacity)
    worker = None
    try:
        worker = Worker(inst, slot, shards, hooks=hooks)
        worker.start(durable=True, snapshot_cpus=usable)
        while not worker.stopping():
            worker.step()
        worker.compactor.complete()  # the final snapshot must see the rebuilt shard
        worker.store.finish()
    except Exception:
        log.exception("worker slot %d (pid %d) failed", slot, os.getpid())
        raise
    finally:
        if worker is not None and worker.store is not None:
            worker.store.close()
        inst.close()
