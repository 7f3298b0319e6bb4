"""Cluster mode's partition table: what this host applies and serves, per partition.

Lives in the control block (``inst.partition_rows``, i64[P, 8]). Single
writer: the cluster follower (``engine.cluster.follower``), including a
restarted follower repairing what a dead one left. Readers: the front
(recall fencing, read-your-writes), the exporter and ``cluster status``.

Row layout (all i64)::

    P_EPOCH        lease epoch this host holds for the partition; 0 = not held
    P_STATE        FREE, LOADING (snapshot/replay before serving), SERVING, FENCED
    P_NEXT_POS     next position to apply (``engine.cluster.names.position``:
                   stream sequence << 16 | records of that message already queued)
    P_VALID_US     CLOCK_MONOTONIC µs until which the lease is surely held
                   (the same clock in every process of a host)
    P_APPLIED      records applied since this host started
    P_STREAM_LAST  the partition's last stream sequence the follower saw
    P_SNAP_SEQ     stream sequence the newest snapshot covers (uploaded or loaded)
    P_SNAP_MS      unix ms of that snapshot

Exactly once per stream sequence: a message is queued into one ring with the
ring's publish journal tagged (``JOURNAL_TAG | partition``, first position),
and P_NEXT_POS advances under the same ring lock inside the journal's window
(``shm.ring``), exactly as a gateway session's sequence does
(``engine.control.sessions``). A follower killed inside that window leaves
the journal open; its replacement runs ``repair`` before applying anything,
so P_NEXT_POS counts exactly what reached a ring. (In cluster mode the
front publishes to the stream and never queues into rings, so every journal
there is the follower's.)

Serving rule (epoch fencing): a partition is applied and served only while
its row says SERVING/LOADING with a non-zero epoch and ``now < P_VALID_US``;
``serving`` checks all three.
"""

from __future__ import annotations

import time

import numpy as np

P_EPOCH, P_STATE, P_NEXT_POS, P_VALID_US, P_APPLIED, P_STREAM_LAST, P_SNAP_SEQ, P_SNAP_MS = range(8)
FREE, LOADING, SERVING, FENCED = 0, 1, 2, 3
STATE_NAMES = {FREE: "free", LOADING: "loading", SERVING: "serving", FENCED: "fenced"}
#: A position is ``stream sequence << 16 | records of it applied``
#: (``engine.cluster.names.position``, which this package may not import).
POSITION_OFFSET_BITS = 16
JOURNAL_TAG = 1 << 40  # tag_a of a partition's ring journal; session journals use row numbers


def now_us() -> int:
    return int(time.monotonic() * 1_000_000)


class PartitionTable:
    def __init__(self, rows: np.ndarray, clock_us=now_us):
        self.rows = rows  # i64[P, 8]; written by the follower only
        self.clock_us = clock_us

    @property
    def count(self) -> int:
        return len(self.rows)

    def next_pos(self, p: int) -> int:
        return int(self.rows[p, P_NEXT_POS])

    def advance(self, p: int, first: int, n: int) -> None:
        """``n`` records from position ``first`` reached a ring (called under its lock)."""
        row = self.rows[p]
        end = first + n
        if end > row[P_NEXT_POS]:
            row[P_NEXT_POS] = end
            row[P_APPLIED] += n

    def set_position(self, p: int, pos: int) -> None:
        """Move to ``pos`` with nothing queued (a message fully applied, or skipped as empty)."""
        if pos > self.rows[p, P_NEXT_POS]:
            self.rows[p, P_NEXT_POS] = pos

    def hold(self, p: int, epoch: int, valid_us: int, state: int) -> None:
        row = self.rows[p]
        row[P_VALID_US] = valid_us
        row[P_STATE] = state
        row[P_EPOCH] = epoch  # last: the epoch names a complete row

    def set_state(self, p: int, state: int) -> None:
        self.rows[p, P_STATE] = state

    def extend(self, p: int, valid_us: int) -> None:
        self.rows[p, P_VALID_US] = valid_us

    def drop(self, p: int, state: int = FREE) -> None:
        row = self.rows[p]
        row[P_EPOCH] = 0  # first: nothing serves from here
        row[P_STATE] = state
        row[P_VALID_US] = 0

    def serving(self, p: int, epoch: int | None = None, require_state: int = SERVING) -> bool:
        """Whether ``p`` may be served now (and, with ``epoch``, still under that epoch)."""
        row = self.rows[p]
        e = int(row[P_EPOCH])
        return (e != 0 and (epoch is None or e == epoch) and int(row[P_STATE]) == require_state
                and self.clock_us() < int(row[P_VALID_US]))

    def epoch(self, p: int) -> int:
        """The epoch the row is held under (0: not held)."""
        return int(self.rows[p, P_EPOCH])

    def held(self, p: int, epoch: int) -> bool:
        """Applying may go on: the epoch is still ours and the lease is surely valid."""
        row = self.rows[p]
        return int(row[P_EPOCH]) == epoch and self.clock_us() < int(row[P_VALID_US])

    def snapshot(self, p: int, seq: int, ms: int) -> None:
        self.rows[p, P_SNAP_SEQ] = seq
        self.rows[p, P_SNAP_MS] = ms

    def saw_stream(self, p: int, last_seq: int) -> None:
        if last_seq > self.rows[p, P_STREAM_LAST]:
            self.rows[p, P_STREAM_LAST] = last_seq

    def apply_lag(self, p: int) -> int:
        """Stream sequences between the partition's last one seen and the last one
        applied (0 when not held or caught up). The stream interleaves partitions,
        so this bounds from above the partition's messages not yet applied."""
        row = self.rows[p]
        if int(row[P_EPOCH]) == 0:
            return 0
        applied = (int(row[P_NEXT_POS]) >> POSITION_OFFSET_BITS) - 1
        return max(0, int(row[P_STREAM_LAST]) - max(applied, 0))

    def live_gauges(self) -> dict:
        """The cluster gauges the exporter computes at scrape time (``metrics.catalog``)."""
        epochs = self.rows[:, P_EPOCH]
        held = [p for p in range(self.count) if int(epochs[p]) != 0]
        return {
            "cluster_partition_epoch": [({"partition": str(p)}, float(epochs[p])) for p in range(self.count)],
            "cluster_partitions_owned": [({}, float(len(held)))],
            "cluster_apply_lag_messages": [({}, float(max((self.apply_lag(p) for p in held), default=0)))],
        }

    def repair(self, rings) -> int:
        """Apply the publish journals a dead follower left open (before applying anything)."""
        applied = 0
        for ring in rings:
            got = ring.take_journal()
            if got is None:
                continue
            published, n, tag, first = got
            p = tag - JOURNAL_TAG
            if published and n and tag & JOURNAL_TAG and 0 <= p < self.count:
                self.advance(p, first, n)
                applied += 1
        return applied
