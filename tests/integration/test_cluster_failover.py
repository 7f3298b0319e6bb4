"""Failures: a host killed with SIGKILL, a NATS server killed, a stale owner (SIGSTOP).

Producers write through the gateways of hosts that stay up; what the test
checks is partition ownership moving, and that every acknowledged
observation ends up exactly once on its partition's current owner.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

from engine.client import Client
from engine.cluster import names

from tests.harness import wait_for
from tests.integration.test_cluster_ingest import (P, all_owned, counts_by_space, dataset, owned_partitions,
                                                   wait_held, send_all, start_hosts, stop_hosts)

TTL = 3.0


class Producer(threading.Thread):
    """Sends ``data`` through ``targets`` in the background; counts acknowledged observations."""

    def __init__(self, targets, data):
        super().__init__(daemon=True)
        self.targets, self.data, self.acked, self.error = targets, data, 0, None

    def run(self):
        try:
            self.acked = send_all(self.targets, self.data, batch=100)
        except Exception as exc:  # reported by the test
            self.error = exc


def test_kill9_host_mid_stream_partitions_move_nothing_lost(tmp_path, nats3, request):
    hosts = start_hosts(tmp_path, nats3, "kil", 3, log_replicas="3", lease_ttl=str(TTL))
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over three hosts")
        victim, survivors = hosts[2], hosts[:2]
        lost = owned_partitions(victim)
        assert lost
        data = dataset(30, 6000, seed=3)
        prod = Producer([h.target for h in survivors], data)
        prod.start()
        wait_for(lambda: prod.acked or sum(counts_by_space(victim).values()) > 0, 30, 0.05, "ingest started")
        victim.kill9()
        killed = time.monotonic()
        wait_for(lambda: all_owned(survivors), 60, 0.1, "the victim's partitions owned by survivors")
        failover = time.monotonic() - killed
        prod.join(120)
        assert prod.error is None, prod.error
        wait_held(survivors, data, 120, "every acknowledged observation on its new owner, once")
        sys.stderr.write(f"\nfailover of {len(lost)} partition(s) after kill -9: {failover:.2f}s "
                         f"(lease ttl {TTL}s)\n")
        assert failover < TTL * 4
        with Client(survivors[0].target) as c:
            for s in sorted(data)[:10]:
                ids, vecs = data[s]
                res = c.recall(s, vecs[:2], k=3)
                assert res.complete and list(res.ids[:, 0]) == list(ids[:2])
    finally:
        stop_hosts(hosts, request)


def test_kill9_nats_server_no_acknowledged_loss(tmp_path, nats3, request):
    hosts = start_hosts(tmp_path, nats3, "nk", 2, log_replicas="3", lease_ttl=str(TTL))
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        data = dataset(12, 4800, seed=5)
        first = dict(sorted(data.items())[:6])
        rest = dict(sorted(data.items())[6:])
        assert send_all([h.target for h in hosts], first, batch=100) == sum(len(v[0]) for v in first.values())
        nats3.kill(0)
        # ingest continues on the remaining quorum (clients retry an unanswered batch)
        acked = send_all([h.target for h in hosts], rest, batch=100)
        assert acked == sum(len(v[0]) for v in rest.values())
        wait_held(hosts, data, 120, "everything acknowledged applied once")
    finally:
        stop_hosts(hosts, request)


def test_stale_owner_neither_applies_nor_serves(tmp_path, nats3, request):
    hosts = start_hosts(tmp_path, nats3, "st", 2, log_replicas="3", lease_ttl=str(TTL))
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        stale, other = hosts
        mine = owned_partitions(stale)
        space = next(f"space-{i:02d}" for i in range(1000) if names.partition_of(f"space-{i:02d}", P) in mine)
        rng = np.random.default_rng(2)
        ids1, v1 = np.arange(1, 101, dtype=np.uint64), rng.standard_normal((100, 16)).astype(np.float32)
        send_all([other.target], {space: (ids1, v1)})
        wait_for(lambda: counts_by_space(stale).get(space, 0) == 100, 30, 0.05, "applied by the first owner")
        os.killpg(stale.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: names.partition_of(space, P) in owned_partitions(other), 60, 0.1,
                     "the partition taken over while its owner is stopped")
            ids2, v2 = np.arange(101, 201, dtype=np.uint64), rng.standard_normal((100, 16)).astype(np.float32)
            send_all([other.target], {space: (ids2, v2)}, batch=50)
        finally:
            os.killpg(stale.proc.pid, signal.SIGCONT)
        # Woken up: it must notice at once, before it could apply or serve anything more.
        with Client(stale.target) as c:
            res = c.recall(space, v2[:1], k=1)
        assert (not res.complete) or list(res.ids[:, 0]) == [101], res  # never the stale owner's answer
        wait_for(lambda: counts_by_space(other).get(space, 0) == 200, 60, 0.1, "new owner applied everything")
        assert counts_by_space(stale).get(space, 0) == 100
        assert names.partition_of(space, P) not in owned_partitions(stale)
    finally:
        stop_hosts(hosts, request)
