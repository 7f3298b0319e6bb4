"""Receipts of applied forgets: a unary Forget answered by whichever gateway took it.

In cluster mode a gateway stores a unary Forget in the log; the partition's
owner, perhaps another host, applies it. For the answer to say ``applied``
and ``not_found`` whatever gateway received the call:

* The owner's applier notes, per message of forgets it applied whole, how
  many of its ids named nothing the space held or had queued (``Receipts``,
  the newest ``MAX_RECEIPTS`` messages). A message applied before this host
  took the partition over (covered by the snapshot it loaded, or applied in
  part by a previous follower) has no count: ``None``.
* The gateway asks over core NATS, request/reply on
  ``engram.<c>.forgot.<p>`` (``names.receipt_subject``; every follower
  subscribes to all partitions). Only the host holding the partition
  answers (``answer``): once it applied the partition past the message and
  its workers committed what that queued, ``applied`` with the count; after
  ``wait_s`` without that, ``pending``; when it lost the partition while
  waiting, ``moved``. Any other host stays silent, so the asker retries in
  short attempts until its deadline (``LogClient.receipt``) and, after a
  handoff, the new owner answers.

Wire (JSON): request ``{"seq": s, "wait_s": w}``; reply ``{"state":
"applied" | "pending" | "moved", "not_found": n | null}``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from engine.cluster import names

MAX_RECEIPTS = 65_536    # about 100 bytes each: a few MiB at most
MAX_WAIT_S = 5.0         # longest one request is held before "pending"
POLL_S = (0.001, 0.02)   # re-check interval while waiting, doubling: many waiters stay cheap


class Receipts:
    """``not_found`` per (partition, stream sequence) of the newest messages of forgets applied here."""

    def __init__(self, limit: int = MAX_RECEIPTS):
        self.limit = limit
        self._counts: OrderedDict[tuple[int, int], int | None] = OrderedDict()

    def put(self, p: int, seq: int, not_found: int | None) -> None:
        self._counts[(p, seq)] = not_found
        self._counts.move_to_end((p, seq))
        while len(self._counts) > self.limit:
            self._counts.popitem(last=False)

    def get(self, p: int, seq: int) -> int | None:
        return self._counts.get((p, seq))

    def __len__(self) -> int:
        return len(self._counts)


async def answer(table, rings, receipts: Receipts, p: int, seq: int, wait_s: float) -> dict | None:
    """The reply of this host to "was message ``seq`` of partition ``p`` applied?";
    None when this host does not hold ``p`` (another host answers)."""
    epoch = table.epoch(p)
    if not epoch:
        return None
    deadline = time.monotonic() + min(max(0.0, wait_s), MAX_WAIT_S)
    target = names.position(seq + 1)
    marks = None
    pause = POLL_S[0]
    while True:
        if table.epoch(p) != epoch:
            return {"state": "moved", "not_found": None}
        if marks is None and table.next_pos(p) >= target:
            # the message's records are in the rings, at or below these heads
            marks = [(ring, ring.head) for ring in rings]
        if marks is not None and all(ring.tail >= end for ring, end in marks):
            return {"state": "applied", "not_found": receipts.get(p, seq)}
        if time.monotonic() >= deadline:
            return {"state": "pending", "not_found": None}
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_S[1])
