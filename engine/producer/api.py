"""The same-host client: ``engine.connect(name)`` → ``Engine``.

observe: validate → admit (priority × backpressure state) → route (home slot
of the space, spill-over) → stamp (engine.ledger.stamps) → enqueue into
shared memory with one copy → wake the worker if it sleeps. forget
(``engine.producer.forgetting``): the same path with ids only, admitted and
queued like ``high`` priority. recall (``engine.producer.recalling``):
optional exact scan of queued records (``fresh``), fan-out to every slot
holding a shard of the space, top-k merge.

Thread safety: an ``Engine`` may be shared by threads; ring and control
updates take kernel byte locks that also exclude threads (shm.lock).
"""

from __future__ import annotations

import os
import threading
import time


import numpy as np

from engine.control import admission
from engine.control import pressure
from engine.control import report
from engine.producer import validation
from engine.errors import InvalidInput, NotRunning, shown
from engine.control.layouts import LANE_INDEX
from engine.control.records import PRODUCER
from engine.control.instance import Instance
from engine.control.liveness import Liveness
from engine.control.query import QueryClient
from engine.control.spaces import SpaceRegistry
from engine.producer.forgetting import Forgetting
from engine.producer.recalling import Recalling
from engine.producer.refusals import BUSY
from engine.recallhealth import report as recall_report
from engine.ledger.book import OBSERVE
from engine.ledger import stamps
from engine.ledger.stamps import StampClock
from engine.results import Ack
from engine.producer.routing import home_slot, spill_order
from engine.recallhealth.board import BreakerBoard
from metrics.lease import ProducerRowLease
from shm.errors import LayoutError, LockTimeout, SegmentMissing


class Engine(Recalling, Forgetting):
    def __init__(self, inst: Instance, writer=None, liveness: Liveness | None = None):
        """``writer``: record metrics into this writer (the gateway's own
        row) instead of a leased producer row. ``liveness``: how to tell the
        run is still live (tests inject their own)."""
        self.inst = inst
        self.liveness = liveness if liveness is not None else Liveness(inst)
        self.params = inst.params
        self.dim = inst.dim
        self.metric = self.params.metric
        self.spaces = SpaceRegistry(inst)
        self.queries = QueryClient(inst)
        self.clock = StampClock(inst.header.stamp_offset,
                                ceiling_path=os.path.join(inst.params.data_dir, stamps.FILE))
        self._lease: ProducerRowLease | None = None
        self._writer = writer
        self._metrics_lock = threading.Lock()  # a row has one writer: serialise threads
        # Per-slot recall circuit breakers, shared with every recaller (engine.recallhealth.board).
        self.breakers = BreakerBoard(inst, self.record, enabled=self.params.breaker == "on")

    # -- metrics -----------------------------------------------------------
    def record(self, fn) -> None:
        """Run ``fn(writer)`` on this process's metric row (leased on first use)."""
        if self.params.no_metrics:
            return
        with self._metrics_lock:
            if self._writer is not None:
                fn(self._writer)
                return
            if self._lease is None:
                self._lease = ProducerRowLease(self.inst.metrics, self.inst.metrics_lock_path)
            fn(self._lease.writer)

    def count_rejected(self, space: int | None, reason: str, n: int) -> None:
        # Unknown or invalid space names count under `_other`: a rejection
        # never registers a space (bounded label cardinality).
        idx = self.params.max_spaces if space is None else space
        self.record(lambda w: w.inc("observations_rejected_total", n, memory_space=idx, reason=reason))

    def _count_invalid(self, space, ids) -> None:
        """Count a call refused as bad input (under its space if that is known)."""
        known = self.spaces.lookup(space) if isinstance(space, str) else None
        self.count_rejected(known, "invalid_input", _batch_len(ids))

    def _transition(self, old: int, new: int) -> None:
        self.record(lambda w: w.inc("backpressure_activations_total", level=admission.STATES[new]))

    # -- backpressure --------------------------------------------------------
    def backpressure(self) -> int:
        """Current state index, moved along by the pressure seen now."""
        return pressure.refresh(self.inst, self._transition)

    # -- observe -----------------------------------------------------------
    def observe(self, space: str, ids, vectors, priority: str = "normal") -> Ack:
        """Queue observations of one space; see ``Ack``. Bad input raises
        InvalidInput and is counted as rejected with reason invalid_input."""
        return self.observe_into(space, ids, vectors, priority)

    def observe_into(self, space: str, ids, vectors, priority: str = "normal",
                     journal: tuple[int, int] | None = None, on_publish=None) -> Ack:
        """``observe``; with ``journal``, the batch goes into one ring only and
        ``on_publish(n)`` runs atomically with its publication (the gateway
        advances a session's sequence with it; see shm.ring)."""
        p = self.params
        try:
            space = validation.space_name(space)
            priority = validation.priority(priority)
            ids = validation.ids(ids, p.max_batch_size)
            vectors = validation.vectors(vectors, len(ids), self.dim, self.metric)
        except InvalidInput:
            self._count_invalid(space, ids)
            raise
        n = len(ids)
        self._check_alive()
        state = self.backpressure()
        state_name = admission.STATES[state]
        if self.inst.header.admission_closed:
            self.count_rejected(self.spaces.lookup(space), "over_capacity", n)
            return Ack(0, {"over_capacity": n}, state_name, "engine is shutting down")
        if (blocked := self._unwritable()) or not admission.admits(priority, state):
            self.count_rejected(self.spaces.lookup(space), "over_capacity", n)
            return Ack(0, {"over_capacity": n}, state_name,
                       blocked or f"{priority} priority refused while backpressure is {state_name}")
        # Registered only once the batch is admitted: a space exists when data
        # is accepted into it, so refused batches and empty sessions do not
        # use up --max-spaces.
        try:
            idx = self.spaces.register(space)
        except InvalidInput:
            self.count_rejected(None, "invalid_input", n)
            raise
        except LockTimeout:
            self.count_rejected(self.spaces.lookup(space), "over_capacity", n)
            return Ack(0, {"over_capacity": n}, state_name, BUSY)
        if (full := self._ids_full(n, ids=ids, space=idx)) is not None:
            self.count_rejected(idx, "over_capacity", n)
            return Ack(0, {"over_capacity": n}, state_name, full)
        written, busy, _ = self._queue(space, idx, ids, vectors, LANE_INDEX[priority], OBSERVE, journal, on_publish)
        # The ack carries the state after this batch: what the next one meets.
        state_name = admission.STATES[self.backpressure()]
        if written == n:
            return Ack(n, {}, state_name)
        self.count_rejected(idx, "over_capacity", n - written)
        return Ack(written, {"over_capacity": n - written}, state_name,
                   BUSY if busy else f"{priority} lane full: {n - written} of {n} rejected")

    def _unwritable(self) -> str:
        """'' or why no write is admitted now: a worker's log cannot be
        written, or stamps would pass the ceiling on disk (``engine.ledger.stamps``)."""
        return pressure.unwritable(self.inst) or self.clock.blocked()

    def _ids_full(self, n: int, share: float = 0.75, ids=None, space: int | None = None) -> str | None:
        """Why ``n`` more operations would not fit the identity table, if so:
        its entries plus every record the rings can hold must stay within
        ``share`` of it (3/4 for observations; forgets, which free entries
        in the end, may go to 7/8), so a worker never meets a full table.
        Near the limit, observations of ids the table tracks already (a
        replacement) need no room."""
        table = self.inst.ids
        room = int(table.capacity * share) - table.used - sum(self.inst.capacity_by_lane())
        if n <= room:
            return None
        if ids is not None:
            n = int((table.find(space, ids) < 0).sum())
            if n <= room:
                return None
        return (f"identity table full: {table.used} keys tracked, room for {max(0, room)} more "
                f"(raise --max-ids, now {self.params.max_ids}, or forget observations)")

    def _check_alive(self) -> None:
        """Refuse to queue into the shared memory of a run that is gone: nothing
        would ever insert it, yet the ack would say accepted (``Liveness``:
        not a pid, which another process may have by now)."""
        why = self.liveness.why_not()
        if why is not None:
            raise NotRunning(f"instance {self.inst.name!r} is not running: {why}")

    def _targets(self, space: str, lane: int) -> tuple[list, list[int], list[int]]:
        """(the lane's rings, free room of each, slots in spill order)."""
        inst = self.inst
        rings = [inst.ring(s, lane) for s in range(inst.slots)]
        free = [r.capacity - r.queued() for r in rings]
        return rings, free, spill_order(home_slot(space, inst.slots), free)

    def _queue(self, space: str, idx: int, ids: np.ndarray, vectors: np.ndarray | None, lane: int, kind: int,
               journal: tuple[int, int] | None, on_publish) -> tuple[int, bool, list]:
        """``_enqueue``, or with ``journal`` ``_enqueue_one_ring``."""
        if journal is None:
            return self._enqueue(idx, ids, vectors, lane, kind)
        return self._enqueue_one_ring(space, idx, ids, vectors, lane, kind, journal, on_publish)

    def _enqueue(self, idx: int, ids: np.ndarray, vectors: np.ndarray | None, lane: int,
                 kind: int) -> tuple[int, bool, list]:
        """(records written, whether a ring's lock was not free in time,
        [(ring, head after our records)]). One stamp for the whole call."""
        rings, _, order = self._targets(self.inst.space_name(idx), lane)
        now = time.monotonic()
        stamps = np.full(len(ids), self.clock.take(), np.uint64)
        written = 0
        busy = 0
        marks = []
        for slot in order:
            try:
                n = rings[slot].enqueue(ids[written:], None if vectors is None else vectors[written:], idx, now,
                                        stamps[written:], kind)
            except LockTimeout:
                busy += 1  # its lock holder is stopped: the next ring in spill order
                continue
            if n:
                written += n
                marks.append((rings[slot], rings[slot].head))
                self._wake(slot, rings[slot].depth())
            if written == len(ids):
                break
        return written, busy > 0, marks

    def _enqueue_one_ring(self, space: str, idx: int, ids: np.ndarray, vectors: np.ndarray | None, lane: int,
                          kind: int, journal: tuple[int, int], on_publish) -> tuple[int, bool, list]:
        """Into the first ring in spill order with room for the whole batch,
        else the one with the most room (a leading part goes in)."""
        rings, free, order = self._targets(space, lane)
        fits = [s for s in order if free[s] >= len(ids)]
        slot = fits[0] if fits else max(order, key=lambda s: free[s])
        stamps = np.full(len(ids), self.clock.take(), np.uint64)
        try:
            n = rings[slot].enqueue(ids, vectors, idx, time.monotonic(), stamps, kind, journal=journal,
                                    on_publish=on_publish)
        except LockTimeout:
            return 0, True, []  # nothing published: the session's number did not move; the client resends
        if n:
            self._wake(slot, rings[slot].depth())
        return n, False, [(rings[slot], rings[slot].head)] if n else []

    def _wake(self, slot: int, depth: int) -> None:
        live = self.inst.live
        if live(slot).sleeping:
            self.inst.wake[slot].post()
        if depth > self.params.steal_threshold:
            for other in range(self.inst.slots):
                if other != slot and live(other).sleeping:
                    self.inst.wake[other].post()
                    break

    # -- recall ------------------------------------------------------------
    # -- status / teardown -------------------------------------------------
    def status(self, interval: float = 0.0) -> dict:
        """The ``engram-stream status --json`` object; ``interval`` > 0 adds rates."""
        st = report.collect(self.inst, interval)
        st["recall_health"] = recall_report.recall_health(self.inst)  # probes and breakers
        st["config"] = recall_report.config_report(self.inst)  # live settings and the tuner's changes
        return st

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self.liveness.close()
        self.inst.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _batch_len(ids) -> int:
    try:
        return max(1, len(ids))
    except TypeError:
        return 1


def connect(name: str = "engram") -> Engine:
    """Attach to the running instance ``name`` on this host."""
    try:
        inst = Instance.attach(name, PRODUCER)
    except SegmentMissing:
        raise NotRunning(f"no running engram instance named {shown(name)} on this host") from None
    except LayoutError as exc:
        raise NotRunning(f"instance {shown(name)} is not ready: {exc}") from None
    liveness = Liveness(inst)
    why = liveness.why_not()
    if why is not None:
        liveness.close()
        inst.close()
        # Shared memory outlives a killed supervisor; the next start of the
        # name carries its queued observations over and removes it.
        raise NotRunning(f"instance {shown(name)} is not running: {why}")
    return Engine(inst, liveness=liveness)
