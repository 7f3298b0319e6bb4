"""Recall requests through shared memory: one client, many answering workers.

Query segment layout (``engine.control.layouts.query_layout``; Q slots, S worker
slots, B query vectors per request, K = max k, D = dim)::

    req     i64[Q, 8]        seq, space, nq, k, ef; the client holding slot j
    want    i64[Q, S]        seq worker s should answer; the client
    done    i64[Q, S]        seq worker s has answered; worker s only
    cols    i64[Q, S]        result columns worker s wrote; worker s only
    vectors f32[Q, B, D]     query vectors; the client
    ids     u64[Q, S, B, K]  worker s's answer; worker s only
    dist    f32[Q, S, B, K]

Protocol: a client owns slot j while it holds fcntl byte LOCK_QUERY_BASE+j
(kernel-released if it dies). It writes the request, bumps ``req.seq``, sets
``want[j, s] = seq`` for each target and posts that worker's wake signal.
A worker, between insert batches, answers every ``j`` with
``want[j, s] > done[j, s]``: writes ids/dist/cols, then ``done[j, s] = seq``,
then posts ``qdone[j]``. The client reads a worker's columns only once
``done == seq``; the semaphore round trip orders the stores. A late answer
to an old seq is harmless: it is overwritten before the newer seq is marked
done. Every field read from the segment is bounds-checked (untrusted input).
"""

from __future__ import annotations

import random
import time

import numpy as np

from engine.control.layouts import LOCK_QUERY_BASE
from engine.control.instance import Instance

REQ_SEQ, REQ_SPACE, REQ_NQ, REQ_K, REQ_EF = range(5)
# Space index of the workers' reserved probe shard (engine.recallhealth.probeset).
PROBE_SPACE = -1


class QueryClient:
    def __init__(self, inst: Instance):
        self.inst = inst
        self.q = inst.query

    def _take_slot(self, deadline: float) -> int | None:
        n = self.inst.params.query_slots
        start = random.randrange(n)
        while True:
            for i in range(n):
                j = (start + i) % n
                if self.inst.locks.try_acquire(LOCK_QUERY_BASE + j):
                    return j
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.001)  # every slot busy: back off briefly, then retry

    def ask(self, space: int, queries: np.ndarray, k: int, ef: int, targets: list[int],
            deadline: float, answered: dict | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """Ask ``targets`` for the top-k of ``queries``; returns (parts, complete).

        ``answered``, when given, gets ``{target: (seconds to its answer, part)}``
        of every target that answered in time (the breakers and the prober)."""
        if not targets:
            return [], True
        j = self._take_slot(deadline)
        if j is None:
            return [], False
        try:
            return self._ask_in_slot(j, space, queries, k, ef, targets, deadline, answered)
        finally:
            self.inst.locks.release(LOCK_QUERY_BASE + j)

    def _ask_in_slot(self, j, space, queries, k, ef, targets, deadline, answered=None):
        q, inst = self.q, self.inst
        asked = time.monotonic()
        nq = len(queries)
        req = q["req"][j]
        seq = int(req[REQ_SEQ]) + 1
        q["vectors"][j, :nq] = queries
        req[REQ_SPACE], req[REQ_NQ], req[REQ_K], req[REQ_EF] = space, nq, k, ef
        req[REQ_SEQ] = seq
        inst.qdone[j].drain()
        for t in targets:
            q["want"][j, t] = seq
            inst.wake[t].post()
        pending = set(targets)
        parts = []
        while pending:
            for t in list(pending):
                if int(q["done"][j, t]) == seq:
                    c = int(q["cols"][j, t])
                    c = min(max(c, 0), k)
                    parts.append((q["ids"][j, t, :nq, :c].copy(), q["dist"][j, t, :nq, :c].copy()))
                    pending.discard(t)
                    if answered is not None:
                        answered[t] = (time.monotonic() - asked, parts[-1])
            if not pending:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            inst.qdone[j].wait(min(left, 0.05))
        for t in pending:
            q["want"][j, t] = 0  # withdraw: nobody needs the late answer
        return parts, not pending


def serve_pending(inst: Instance, slot: int, search) -> int:
    """Answer every request addressed to ``slot``; returns how many were answered.

    ``search(space, vectors, k, ef) -> (ids (nq, c), dist (nq, c))``.
    """
    q = inst.query
    want, done = q["want"][:, slot], q["done"][:, slot]
    pending = np.flatnonzero(want > done)
    p = inst.params
    for j in pending:
        seq = int(want[j])
        req = q["req"][j]
        space, nq, k, ef = (int(req[REQ_SPACE]), int(req[REQ_NQ]), int(req[REQ_K]), int(req[REQ_EF]))
        cols = 0
        if (int(req[REQ_SEQ]) == seq and (0 <= space < p.max_spaces or space == PROBE_SPACE)
                and 0 < nq <= p.query_batch
                and 0 < k <= p.max_k):
            ids, dist = search(space, q["vectors"][j, :nq], k, max(ef, k))
            cols = ids.shape[1]
            q["ids"][j, slot, :nq, :cols] = ids
            q["dist"][j, slot, :nq, :cols] = dist
        q["cols"][j, slot] = cols
        done[j] = seq
        inst.qdone[j].post()
    return len(pending)
