"""Applying one partition: the stream's messages in order, exactly once, into local rings.

``apply_partition`` runs as one asyncio task per owned partition in the
follower. It reads the partition's subject message by message with a
"next message of this subject from sequence s" get (JetStream's
``next_by_subj``; no consumer state on the server, so nothing to clean up
after a crash or a handoff, and any server of the stream can answer), and
queues each batch through the local producer path
(``Engine.observe_into``: validation, admission, backpressure, rings,
WAL, snapshots and metrics as for any producer).

Exactly once: the ring publish journal advances the partition's position
(``engine.control.partitions``) atomically with the records; the position
says which message and how many of its records are in. Backpressure: when
the engine admits nothing, the task waits and retries the rest of the same
message: it pulls less, it never drops or rejects. Fencing: before every
enqueue the task checks that the row still carries its epoch and that the
lease is surely valid; otherwise it applies nothing more: it ends when the
row's epoch is no longer its own, and waits (``still_ours``) while only
the validity lapsed, because the follower's loop, which renews the lease
and extends the row, may simply not have run yet (a slow NATS answer).
Ending there instead left a held, renewed lease with nobody applying it.
"""

from __future__ import annotations

import asyncio
import logging

from engine.cluster import codec, names
from engine.control.partitions import JOURNAL_TAG, LOADING, SERVING, PartitionTable
from engine.errors import InvalidInput, NotRunning

log = logging.getLogger("engram.cluster")

IDLE_POLL_S = 0.5        # longest wait for a doorbell before asking the stream again
PAUSE_S = 0.05           # re-check interval while the row's validity has lapsed
BACKOFF_S = (0.005, 0.2)  # waits while the local engine admits nothing, doubling


class Doorbell:
    """Set when a message was published on a partition's subject (a core NATS
    subscription rings it), so an idle applier asks the stream at once."""

    def __init__(self):
        self.event = asyncio.Event()

    def ring(self) -> None:
        self.event.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.event.clear()


async def still_ours(table: PartitionTable, p: int, epoch: int) -> bool:
    """True once applying may go on; False when the row's epoch is not ``epoch``
    any more. Applies nothing while it waits: the follower either renews the
    lease (and extends the row) or drops the row (epoch 0)."""
    while not table.held(p, epoch):
        if table.epoch(p) != epoch:
            return False
        await asyncio.sleep(PAUSE_S)
    return True


async def apply_partition(js, engine, table: PartitionTable, cluster: str, p: int, epoch: int,
                          bell: Doorbell, counters: dict, on_applied=None, receipts=None) -> str:
    """Apply until fenced or cancelled; returns why it stopped. ``receipts``
    (``engine.cluster.receipts.Receipts``) gets the ``not_found`` count of
    each message of forgets applied."""
    from nats.js.errors import NotFoundError
    stream, subject = names.stream(cluster), names.subject(cluster, p)
    seq, off = names.split_position(table.next_pos(p))
    seq = max(seq, 1)
    state = LOADING
    while True:
        if not await still_ours(table, p, epoch):
            return "fenced"
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            if state != SERVING:
                state = SERVING  # caught up with the stream: serve from here
                table.set_state(p, SERVING)
                log.info("partition %d: caught up at stream sequence %d (epoch %d)", p, seq - 1, epoch)
            await bell.wait(IDLE_POLL_S)
            continue
        except asyncio.TimeoutError:
            counters["log_errors"] = counters.get("log_errors", 0) + 1
            await asyncio.sleep(0.1)
            continue
        if int(msg.seq) != seq:
            off = 0  # the message at seq was purged (covered by a snapshot already applied)
        seq = int(msg.seq)
        table.saw_stream(p, seq)
        body = msg.data or b""
        if on_applied is not None:
            on_applied(p, seq, body)  # kept for snapshots first: a crash after it only re-applies
        why = await enqueue(engine, table, p, epoch, seq, off, body, counters, receipts)
        if why is not None:
            return why
        seq, off = seq + 1, 0
        await asyncio.sleep(0)  # let the loop renew leases between messages


async def enqueue(engine, table: PartitionTable, p: int, epoch: int, seq: int, off: int, body: bytes,
                  counters: dict, receipts=None) -> str | None:
    """Queue the records of message ``seq`` from ``off`` on; None when done,
    else why applying must stop. The position then points past ``seq``."""
    try:
        space, priority, ids, vectors = codec.decode(body, engine.dim)
    except InvalidInput as exc:
        log.error("partition %d: stream sequence %d skipped: %s", p, seq, exc)
        counters["skipped"] = counters.get("skipped", 0) + 1
        space, ids, vectors = "", (), ()  # nothing to apply, and no receipt
    # not_found of a message of forgets; unknown when a previous follower queued part of it
    missing = 0 if off == 0 else None
    wait = BACKOFF_S[0]
    while off < len(ids):
        if not await still_ours(table, p, epoch):
            return "fenced"
        pos = names.position(seq, off)
        publish = (lambda k, pos=pos: table.advance(p, pos, k))
        try:
            if vectors is None:  # a message of forgets (engine.cluster.codec)
                ack = engine.forget_into(space, ids[off:], journal=(JOURNAL_TAG | p, pos), on_publish=publish)
                missing = None if missing is None else missing + ack.not_found
            else:
                ack = engine.observe_into(space, ids[off:], vectors[off:], priority, journal=(JOURNAL_TAG | p, pos),
                                          on_publish=publish)
        except InvalidInput as exc:
            log.error("partition %d: stream sequence %d refused by the engine: %s", p, seq, exc)
            counters["skipped"] = counters.get("skipped", 0) + 1
            missing = None
            break
        except NotRunning:
            return "engine gone"
        off += ack.accepted
        if off < len(ids):
            counters["backpressure_waits"] = counters.get("backpressure_waits", 0) + 1
            await asyncio.sleep(wait)
            wait = min(wait * 2, BACKOFF_S[1])
    table.set_position(p, names.position(seq + 1))
    if vectors is None and receipts is not None:
        receipts.put(p, seq, missing)  # before any await: an answer never sees the position without it
    return None
