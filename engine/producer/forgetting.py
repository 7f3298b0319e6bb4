"""Forget through the same-host engine (``Engine`` mixes this in; ``engine.ledger``).

forget: validate → (a space never registered holds nothing: done) → room in
the identity table → count ``not_found`` (nothing to remove, queued
operations included) → queue ids-only records in the ``high`` lane, one
stamp for the call → with ``wait``, until every ring written has committed
past them.
"""

from __future__ import annotations

import time

import numpy as np

from engine.control import admission
from engine.control.layouts import LANE_INDEX
from engine.errors import InvalidInput
from engine.ledger import book
from engine.ledger.book import FORGET
from engine.producer import validation
from engine.producer.refusals import BUSY
from engine.results import ForgetResult
from shm.errors import LockTimeout


class Forgetting:
    """Needs: inst, params, spaces, count_rejected, _count_invalid, _check_alive,
    backpressure, _unwritable, _ids_full, _queue (``Engine``)."""

    def forget(self, space: str, ids, wait: bool = True, timeout: float = 10.0) -> ForgetResult:
        """Forget observations of one space by id; see ``ForgetResult``.

        Queued like ``high`` priority (refused only when that lane is full).
        With ``wait``, returns once every accepted forget is applied (no
        recall returns those ids any more), or after ``timeout`` seconds with
        ``applied`` False. Bad input raises InvalidInput, counted as rejected
        with reason invalid_input."""
        result, marks = self._forget(space, ids)
        if wait and result.accepted:
            result.applied = self.wait_applied(marks, timeout)
        return result

    def forget_into(self, space: str, ids, journal: tuple[int, int] | None = None, on_publish=None) -> ForgetResult:
        """``forget`` without waiting; with ``journal``, as ``observe_into``."""
        return self._forget(space, ids, journal, on_publish)[0]

    def _forget(self, space: str, ids, journal=None, on_publish=None) -> tuple[ForgetResult, list]:
        p = self.params
        try:
            space = validation.space_name(space)
            ids = validation.ids(ids, p.max_batch_size, "forgets")
        except InvalidInput:
            self._count_invalid(space, ids)
            raise
        n = len(ids)
        self._check_alive()
        state_name = admission.STATES[self.backpressure()]
        idx = self.spaces.lookup(space)
        if idx is None:
            # A space that was never registered holds nothing, and nothing of
            # it is queued (a space registers before its first enqueue).
            if journal is not None and on_publish is not None:
                on_publish(n)
            return ForgetResult(n, n, {}, state_name, True), []
        if self.inst.header.admission_closed:
            self.count_rejected(idx, "over_capacity", n)
            return ForgetResult(0, 0, {"over_capacity": n}, state_name, False, "engine is shutting down"), []
        if blocked := self._unwritable():
            self.count_rejected(idx, "over_capacity", n)
            return ForgetResult(0, 0, {"over_capacity": n}, state_name, False, blocked), []
        if (full := self._ids_full(n, 0.875)) is not None:
            self.count_rejected(idx, "over_capacity", n)
            return ForgetResult(0, 0, {"over_capacity": n}, state_name, False, full), []
        gone = self._not_found(idx, ids)  # before ours are queued: they would count themselves
        written, busy, marks = self._queue(space, idx, ids, None, LANE_INDEX["high"], FORGET, journal, on_publish)
        state_name = admission.STATES[self.backpressure()]
        if written == n:
            return ForgetResult(n, int(gone.sum()), {}, state_name, False), marks
        self.count_rejected(idx, "over_capacity", n - written)
        return ForgetResult(written, int(gone[:written].sum()), {"over_capacity": n - written}, state_name, False,
                            BUSY if busy else f"high lane full: {n - written} of {n} forgets rejected"), marks

    def _not_found(self, idx: int, ids: np.ndarray) -> np.ndarray:
        """Mask: which of ``ids`` name nothing the space will hold once what is
        queued before this forget is applied: neither held nor observed again
        by a queued observation, or forgotten by a queued forget (so a second
        forget of the same ids, queued behind the first, finds none of them).
        The rings are read before the table: an operation that leaves a ring
        meanwhile was applied to the table before (a worker commits after
        applying), so none slips between the two."""
        parts = []
        for ring in self.inst.rings:
            if ring.head == ring.tail:
                continue
            try:
                parts.append(ring.queued_ops(idx))
            except LockTimeout:
                continue  # that ring's queue unseen: a count, never a decision
        if not parts:
            parts = [(np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.uint8))]
        queued = tuple(np.concatenate(col) for col in zip(*parts))
        return ~book.live_after(self.inst.ids, idx, ids, queued)

    def wait_applied(self, marks: list, timeout: float) -> bool:
        """Until every ring in ``marks`` [(ring, position)] has committed
        everything before its position (its tail passed it)."""
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while True:
            if all(ring.tail >= end for ring, end in marks):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(0.01, pause * 2)

