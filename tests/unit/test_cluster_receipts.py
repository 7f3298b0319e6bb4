"""Receipts of applied forgets (``engine.cluster.receipts``): the applier
records each message of forgets' ``not_found``; the owner answers "applied"
only once the position passed the message and the rings committed it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from engine.cluster import applier, codec, names, receipts
from engine.control.partitions import LOADING, P_EPOCH, PartitionTable
from tests.unit.test_cluster_applier import DIM, Stream, body, until


class ForgettingEngine:
    """Forgets ``not_found`` of each call's ids: those >= 1000."""
    dim = DIM

    def __init__(self, take: int | None = None):
        self.take = take  # accept at most this many per call (a full ring)

    def forget_into(self, space, ids, journal=None, on_publish=None):
        n = len(ids) if self.take is None else min(self.take, len(ids))
        if on_publish is not None:
            on_publish(n)
        return SimpleNamespace(accepted=n, not_found=int((np.asarray(ids[:n]) >= 1000).sum()))

    def observe_into(self, space, ids, vectors, priority, journal=None, on_publish=None):
        if on_publish is not None:
            on_publish(len(ids))
        return SimpleNamespace(accepted=len(ids))


def forget_body(*ids: int) -> bytes:
    return codec.encode_forget("alpha", np.array(ids, np.uint64))


def held_table() -> PartitionTable:
    table = PartitionTable(np.zeros((1, 8), np.int64), clock_us=lambda: 1)
    table.hold(0, 7, 1 << 60, LOADING)
    return table


def test_receipts_keep_the_newest():
    r = receipts.Receipts(limit=3)
    for seq in range(1, 5):
        r.put(0, seq, seq * 10)
    assert len(r) == 3 and r.get(0, 1) is None and r.get(0, 4) == 40
    r.put(0, 2, 7)       # put again: newest now, the oldest (3) goes next
    r.put(1, 1, 0)
    assert r.get(0, 2) == 7 and r.get(0, 3) is None and r.get(1, 1) == 0


def test_the_applier_records_not_found_of_each_message_of_forgets():
    async def run():
        table, got = held_table(), receipts.Receipts()
        js = Stream([forget_body(1, 2, 1000, 1001), body(5), forget_body(3, 1002)])
        task = asyncio.create_task(applier.apply_partition(js, ForgettingEngine(take=1), table, "c", 0, 7,
                                                           applier.Doorbell(), {}, receipts=got))
        await until(lambda: table.next_pos(0) >= names.position(4))
        task.cancel()
        # summed over the parts a full ring let in one at a time; none for observations
        assert (got.get(0, 1), got.get(0, 2), got.get(0, 3)) == (2, None, 1) and len(got) == 2
    asyncio.run(run())


def test_a_message_a_previous_follower_queued_in_part_has_no_count():
    async def run():
        table, got = held_table(), receipts.Receipts()
        table.set_position(0, names.position(1, 1))  # one id of message 1 was in a ring already
        await applier.enqueue(ForgettingEngine(), table, 0, 7, 1, 1, forget_body(1, 1000), {}, got)
        assert table.next_pos(0) == names.position(2) and len(got) == 1 and got.get(0, 1) is None
    asyncio.run(run())


class Ring:
    def __init__(self, head: int, tail: int):
        self.head, self.tail = head, tail


def test_answer_waits_for_position_and_commit():
    async def run():
        table, got, rings = held_table(), receipts.Receipts(), [Ring(10, 4), Ring(3, 3)]
        assert (await receipts.answer(table, rings, got, 0, 1, 0.05))["state"] == "pending"
        table.set_position(0, names.position(2))
        got.put(0, 1, 5)
        asking = asyncio.create_task(receipts.answer(table, rings, got, 0, 1, 2.0))
        await asyncio.sleep(0.05)
        assert not asking.done()  # the rings have not committed what the message queued
        rings[0].head = 12  # queued after the message: not waited for
        rings[0].tail = 10
        assert await asyncio.wait_for(asking, 2.0) == {"state": "applied", "not_found": 5}
        # applied before this host took over: no count
        table.set_position(0, names.position(9))
        rings[0].tail = 12
        assert await receipts.answer(table, rings, got, 0, 8, 0.0) == {"state": "applied", "not_found": None}
    asyncio.run(run())


def test_answer_is_silent_where_not_held_and_says_moved_when_lost():
    async def run():
        table, got, rings = held_table(), receipts.Receipts(), [Ring(0, 0)]
        asking = asyncio.create_task(receipts.answer(table, rings, got, 0, 5, 2.0))
        await asyncio.sleep(0.02)
        table.rows[0, P_EPOCH] = 0  # dropped: another host answers from now on
        assert (await asyncio.wait_for(asking, 2.0))["state"] == "moved"
        assert await receipts.answer(table, rings, got, 0, 5, 2.0) is None
    asyncio.run(run())
