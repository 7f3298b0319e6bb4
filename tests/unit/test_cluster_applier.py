"""The partition applier against a fake stream and a fake engine: a lapsed
lease validity pauses it (nothing applied) until the row is extended, a
changed epoch ends it, and each message is applied once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
from nats.js.errors import NotFoundError

from engine.cluster import applier, codec, names
from engine.control.partitions import LOADING, PartitionTable, P_EPOCH

DIM = 4


class Clock:
    def __init__(self):
        self.us = 1_000_000

    def __call__(self) -> int:
        return self.us


class Stream:
    """``get_msg(next=True)`` over a list of bodies, sequences from 1."""

    def __init__(self, bodies):
        self.bodies = bodies

    async def get_msg(self, stream, seq, subject, next):
        for s in range(seq, len(self.bodies) + 1):
            return SimpleNamespace(seq=s, data=self.bodies[s - 1])
        raise NotFoundError()


class Engine:
    dim = DIM

    def __init__(self):
        self.got = []

    def observe_into(self, space, ids, vectors, priority, journal=None, on_publish=None):
        self.got.extend(int(i) for i in ids)
        if on_publish is not None:
            on_publish(len(ids))
        return SimpleNamespace(accepted=len(ids))


def body(first: int, n: int = 3) -> bytes:
    ids = np.arange(first, first + n, dtype=np.uint64)
    return codec.encode("alpha", 1, ids, np.ones((n, DIM), np.float32))


def setup(bodies):
    clock = Clock()
    table = PartitionTable(np.zeros((1, 8), np.int64), clock_us=clock)
    table.hold(0, 7, clock.us + 1_000_000, LOADING)
    return clock, table, Stream(bodies), Engine()


async def until(cond, timeout=2.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_lapsed_validity_pauses_then_resumes_without_loss_or_repeat():
    async def run():
        clock, table, js, eng = setup([body(1), body(4)])
        bell = applier.Doorbell()
        task = asyncio.create_task(applier.apply_partition(js, eng, table, "c", 0, 7, bell, {}))
        await until(lambda: eng.got == [1, 2, 3, 4, 5, 6])
        clock.us += 2_000_000  # the follower has not extended the row in time
        js.bodies.append(body(7))
        bell.ring()
        await asyncio.sleep(applier.IDLE_POLL_S + 0.2)
        assert eng.got == [1, 2, 3, 4, 5, 6]  # paused: nothing applied past the validity
        assert not task.done()                # ... but not ended: the lease may be renewed
        table.extend(0, clock.us + 1_000_000)  # renewed
        await until(lambda: eng.got == [1, 2, 3, 4, 5, 6, 7, 8, 9])
        assert names.split_position(table.next_pos(0))[0] == 4
        task.cancel()
    asyncio.run(run())


def test_changed_epoch_ends_the_applier():
    async def run():
        clock, table, js, eng = setup([body(1)])
        task = asyncio.create_task(applier.apply_partition(js, eng, table, "c", 0, 7, applier.Doorbell(), {}))
        await until(lambda: eng.got == [1, 2, 3])
        clock.us += 2_000_000
        table.rows[0, P_EPOCH] = 0  # dropped by the follower (lease lost)
        assert await asyncio.wait_for(task, 2.0) == "fenced"
        js.bodies.append(body(4))
        assert eng.got == [1, 2, 3]
    asyncio.run(run())


def follower_with(valid: bool):
    from engine.cluster.follower import Follower
    inst = SimpleNamespace(params=SimpleNamespace(partitions=1, lease_ttl=3.0),
                           partition_rows=np.zeros((1, 8), np.int64))
    f = Follower(inst, engine=None)
    f.leases = SimpleNamespace(valid=lambda q: valid, held={0: SimpleNamespace(epoch=7)} if valid else {},
                               valid_until=lambda q: 5.0, lose=lambda q: f.lost.append(q))
    f.lost, f.started = [], []

    async def fake_apply(q, epoch):
        f.started.append((q, epoch))
    f._apply = fake_apply
    return f


def test_follower_restarts_an_applier_that_ended_under_a_held_lease():
    async def run():
        f = follower_with(valid=True)
        f.epochs[0] = 7
        f.tasks[0] = asyncio.create_task(asyncio.sleep(0))
        await f.tasks[0]
        f.reap()
        await asyncio.sleep(0)
        assert f.started == [(0, 7)] and 0 in f.tasks
        assert f.table.epoch(0) == 7
    asyncio.run(run())


def test_follower_drops_an_ended_applier_whose_lease_is_gone():
    async def run():
        f = follower_with(valid=False)
        f.epochs[0] = 7
        f.table.hold(0, 7, 1, LOADING)
        f.tasks[0] = asyncio.create_task(asyncio.sleep(0))
        await f.tasks[0]
        f.reap()
        assert f.started == [] and 0 not in f.tasks and f.lost == [0] and f.table.epoch(0) == 0
    asyncio.run(run())
