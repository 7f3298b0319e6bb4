"""Cluster metrics without NATS: lease outcomes counted by ``Leases`` (a fake
bucket, fake clocks) and the partition gauges read from a partition table."""

from __future__ import annotations

import asyncio

import numpy as np
from nats.js.errors import KeyWrongLastSequenceError

from engine.cluster.leases import Leases
from engine.control.partitions import SERVING, PartitionTable


class FakeKV:
    """Revisions per key; ``down`` makes every write fail as if NATS were gone."""

    def __init__(self):
        self.rev = 0
        self.keys: dict[str, int] = {}
        self.down = False

    async def create(self, key, value):
        return await self.update(key, value, last=0)

    async def update(self, key, value, last):
        if self.down:
            raise asyncio.TimeoutError()
        if self.keys.get(key, 0) != last:
            raise KeyWrongLastSequenceError()
        self.rev += 1
        self.keys[key] = self.rev
        return self.rev


def counting(host: str, kv: FakeKV, counts: dict, now: list) -> Leases:
    def inc(name, value=1.0, **labels):
        key = (name, tuple(sorted(labels.items())))
        counts[key] = counts.get(key, 0) + value
    return Leases(kv, host, 3.0, 2, clock=lambda: now[0], wall=lambda: 1000.0, inc=inc)


def test_lease_outcomes_are_counted_by_result():
    kv, counts, now = FakeKV(), {}, [0.0]
    a, b = counting("a", kv, counts, now), counting("b", kv, counts, now)

    async def scenario():
        assert await a.acquire(0) == 1
        assert await b.acquire(0) is None  # b never saw a's write: its create loses the race
        assert await a.renew(0)
        kv.keys["leases.0"] = 999          # another host overwrote the lease
        assert not await a.renew(0)
        assert await a.acquire(1) == 1
        kv.down = True
        assert await a.renew(1)           # NATS gone: an error, the lease still surely valid
    asyncio.run(scenario())
    acq, ren = "cluster_lease_acquisitions_total", "cluster_lease_renewals_total"
    assert counts == {
        (acq, (("result", "ok"),)): 2, (acq, (("result", "conflict"),)): 1,
        (ren, (("result", "ok"),)): 1, (ren, (("result", "conflict"),)): 1, (ren, (("result", "error"),)): 1,
        ("cluster_lease_conflicts_total", ()): 2,
    }


def test_partition_gauges_from_the_table():
    rows = np.zeros((4, 8), dtype=np.int64)
    table = PartitionTable(rows, clock_us=lambda: 0)
    table.hold(1, 3, 10**9, SERVING)
    table.hold(2, 7, 10**9, SERVING)
    table.set_position(1, 5 << 16)    # applied up to sequence 4
    table.saw_stream(1, 9)            # the stream is at 9: lag 5
    table.set_position(2, 11 << 16)
    table.saw_stream(2, 10)           # caught up
    table.saw_stream(3, 50)           # not held: no lag counted
    g = table.live_gauges()
    assert g["cluster_partition_epoch"] == [({"partition": "0"}, 0.0), ({"partition": "1"}, 3.0),
                                            ({"partition": "2"}, 7.0), ({"partition": "3"}, 0.0)]
    assert g["cluster_partitions_owned"] == [({}, 2.0)]
    assert g["cluster_apply_lag_messages"] == [({}, 5.0)]
    table.drop(1)
    assert table.live_gauges()["cluster_apply_lag_messages"] == [({}, 0.0)]
