"""Recall through the same-host engine (``Engine`` mixes this in).

fan-out: optional exact scan of the space's records still queued (``fresh``,
read-your-writes: per id the newest queued operation that is newer than
what the identity table has applied decides, so a queued forget hides the
id and a queued replacement stands in for the indexed vector), then one request to every slot holding a shard of the
space whose breaker admits it (``engine.recallhealth``) and whose worker
beats, through the query slots (``engine.control.query``); the answers are
merged into top-k (``engine.producer.recall.merge``). ``complete`` is False
when a slot was skipped, missed the deadline, or a ring could not be
scanned before its lock deadline.
"""

from __future__ import annotations

import time

import numpy as np

from engine.distances import exact_distances
from engine.ledger.book import OBSERVE, newest
from engine.producer import validation
from engine.producer.recall import merge
from engine.results import RecallResult
from shm.errors import LockTimeout

DEFAULT_RECALL_TIMEOUT_S = 5.0


class Recalling:
    """Needs: inst, params, dim, metric, spaces, queries, breakers, record (``Engine``)."""

    def recall(self, space: str, query, k: int = 10, *, ef: int | None = None, fresh: bool = False,
               timeout: float = DEFAULT_RECALL_TIMEOUT_S) -> RecallResult:
        """Top-k nearest neighbours of each query vector within one space.

        ``ef`` and ``fresh`` are keyword-only, as in the remote clients
        (``engine.client``): a positional call must not mean one thing here
        and another there."""
        p = self.params
        space = validation.space_name(space)
        queries = validation.queries(query, self.dim)
        k = validation.top_k(k, p.max_k)
        ef = p.ef_search if ef is None else validation.top_k(ef, 1 << 20)
        q = len(queries)
        idx = self.spaces.lookup(space)
        if idx is None:
            return RecallResult(np.zeros((q, 0), np.uint64), np.zeros((q, 0), np.float32), True)
        started = time.monotonic()
        deadline = started + timeout
        # Scan rings before reading shard counts: a record committed between
        # the two is then seen in the ring or in a shard we ask (DESIGN §5).
        fresh_part, scanned, masked = None, True, None
        if fresh:
            *fresh_part, masked, scanned = self._scan_rings(idx, queries, k)
        counts = self.inst.shard_counts[:, idx]
        holders = [s for s in range(self.inst.slots) if counts[s] > 0]
        now = time.monotonic()
        allowed, _ = self.breakers.admit(holders)  # open breakers: skipped at once
        targets = [s for s in allowed if self.inst.slot_up(s, now)]
        skipped = [s for s in holders if s not in targets]  # breaker open or worker down
        outcomes: dict[int, str | None] = {}
        complete = not skipped and scanned
        chunk = p.query_batch
        out_ids, out_dist = [], []
        for lo in range(0, q, chunk):
            part_q = queries[lo:lo + chunk]
            answered: dict = {}
            parts, ok = self.queries.ask(idx, part_q, k, max(ef, k), targets, deadline, answered)
            self.breakers.note(targets, answered, outcomes)
            if masked is not None and len(masked):
                parts = [_without(i, d, masked) for i, d in parts]
            complete = complete and ok
            if fresh_part is not None:
                parts.append((fresh_part[0][lo:lo + chunk], fresh_part[1][lo:lo + chunk]))
            ids, dist = merge(parts, len(part_q), k)
            out_ids.append(ids)
            out_dist.append(dist)
        width = min(x.shape[1] for x in out_ids)
        self.breakers.record(outcomes)
        elapsed = time.monotonic() - started
        self.record(lambda w: (w.observe("recall_latency_seconds", elapsed, memory_space=idx),
                                w.inc("recall_queries_total", q, memory_space=idx)))
        return RecallResult(np.vstack([x[:, :width] for x in out_ids]),
                            np.vstack([x[:, :width] for x in out_dist]), complete, tuple(skipped))

    def _scan_rings(self, idx: int, queries: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Exact candidates among queued observations, the ids whose indexed
        vector a queued operation overrides (forgotten or replaced), and False
        when a ring could not be read before its lock deadline (the answer is
        then incomplete)."""
        found, ok = [], True
        for r in self.inst.rings:
            try:
                found.append(r.scan(idx))
            except LockTimeout:
                ok = False
        none = np.zeros((len(queries), 0), np.uint64), np.zeros((len(queries), 0), np.float32)
        ids = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.uint64)
        if len(ids) == 0:
            return (*none, ids, ok)
        vecs = np.concatenate([f[1] for f in found])
        stamps = np.concatenate([f[2] for f in found])
        kinds = np.concatenate([f[3] for f in found])
        pick = newest(ids, stamps)
        ids, vecs, stamps, kinds = ids[pick], vecs[pick], stamps[pick], kinds[pick]
        table = self.inst.ids
        pos = table.find(idx, ids)
        applied = np.zeros(len(ids), np.uint64)
        applied[pos >= 0] = table.stamps[pos[pos >= 0]]
        ahead = (pos < 0) | (stamps >= applied)  # not yet overtaken by what the table applied
        masked = ids[ahead]
        keep = ahead & (kinds == OBSERVE)
        ids, vecs = ids[keep], vecs[keep]
        if len(ids) == 0:
            return (*none, masked, ok)
        dist = exact_distances(queries, vecs, self.metric)
        kk = min(k, len(ids))
        top = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
        return ids[top], np.take_along_axis(dist, top, axis=1), masked, ok


def _without(ids: np.ndarray, dist: np.ndarray, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A shard's answer without the ids in ``masked`` (each row keeps its
    order; rows are cut to a common width)."""
    ok = ~np.isin(ids, masked)
    if ok.all():
        return ids, dist
    width = int(ok.sum(axis=1).min())
    return (np.stack([ids[r][ok[r]][:width] for r in range(len(ids))]).reshape(len(ids), width),
            np.stack([dist[r][ok[r]][:width] for r in range(len(ids))]).reshape(len(ids), width))
