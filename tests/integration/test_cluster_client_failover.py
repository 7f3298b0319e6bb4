"""One NATS server, two hosts: a client with both gateways as targets.

* A session resumes through the other gateway with its id and numbers; a
  batch resent there after a lost ack is answered ``duplicate`` and stored
  once (the log's message id), and Info reports who owns which partition.
* The host whose gateway a streaming client uses is killed with SIGKILL
  mid-stream: the client carries on through the other gateway, in the same
  session, and once the partitions have failed over every acknowledged
  observation is held exactly once.
"""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest

from engine.client import Client
from engine.errors import GatewayError
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.rpc import wire
from tests.harness import wait_for
from tests.integration.test_cluster_ingest import P, all_owned, dataset, start_hosts, stop_hosts, wait_held

TTL = "3"


class Raw:
    """One ObserveStream driven message by message."""

    def __init__(self, target: str, init: pb.Init):
        self.channel = grpc.insecure_channel(target)
        self.pending: queue.Queue = queue.Queue()
        self.pending.put(pb.ClientMessage(init=init))
        self.call = pb_grpc.EngramStub(self.channel).ObserveStream(iter(self.pending.get, None), timeout=60)
        self.ready = self.reply("ready")

    def reply(self, kind: str):
        for msg in self.call:
            if msg.WhichOneof("kind") == kind:
                return getattr(msg, kind)
        raise AssertionError(f"stream ended before a {kind}")

    def batch(self, first: int, ids, vectors) -> pb.BatchAck:
        self.pending.put(pb.ClientMessage(batch=pb.Batch(first_sequence=first, ids=wire.pack_ids(ids),
                                                         vectors=wire.pack_floats(vectors))))
        return self.reply("ack")

    def abandon(self) -> None:
        """End the stream without Close, as a client whose gateway vanished does."""
        self.call.cancel()
        self.channel.close()


def test_a_session_resumes_through_another_gateway_and_a_resend_is_stored_once(tmp_path, nats1, request):
    hosts = start_hosts(tmp_path, nats1, "res", 2, lease_ttl=TTL)
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        a, b = hosts
        data = dataset(1, 300, seed=11)
        space, (ids, vecs) = next(iter(data.items()))
        first = Raw(a.target, pb.Init(space=space))
        assert first.ready.cluster == "res" and first.ready.next_sequence == 1
        sid = first.ready.session_id
        ack = first.batch(1, ids[:100], vecs[:100])
        assert ack.accepted == 100 and ack.next_sequence == 101
        first.abandon()

        # the client never saw that ack: it resumes through b from 1 and resends the batch
        moved = Raw(b.target, pb.Init(space=space, resume_session_id=sid, resume_next_sequence=1))
        assert moved.ready.resumed and moved.ready.session_id == sid and moved.ready.next_sequence == 1
        ack = moved.batch(1, ids[:100], vecs[:100])
        assert ack.accepted == 0 and dict(ack.rejected) == {"duplicate": 100}, ack
        assert ack.next_sequence == 101 and "already stored" in ack.message
        ack = moved.batch(101, ids[100:200], vecs[100:200])
        assert ack.accepted == 100 and ack.next_sequence == 201
        moved.abandon()

        # back on a, which still has the session at 101: it catches up with the client
        back = Raw(a.target, pb.Init(space=space, resume_session_id=sid, resume_next_sequence=201))
        assert back.ready.next_sequence == 201
        assert back.batch(201, ids[200:], vecs[200:]).accepted == 100
        back.abandon()

        wait_held(hosts, data, 60, "300 observations held once by the partition's owner")

        with Client([a.target, b.target]) as c:
            cluster = c.info()["cluster"]
        assert cluster["name"] == "res" and cluster["partitions"] == P and cluster["host_id"] == "h0"
        assert set(cluster["hosts"]) == {"h0", "h1"}
        assert all(h["live"] and not h["draining"] for h in cluster["hosts"].values())
        owned = [p for h in cluster["hosts"].values() for p in h["partitions"]]
        assert sorted(owned) == list(range(P))
    finally:
        stop_hosts(hosts, request)


def test_kill9_of_the_clients_gateway_mid_stream_the_session_goes_on_elsewhere(tmp_path, nats1, request):
    hosts = start_hosts(tmp_path, nats1, "cfo", 2, lease_ttl=TTL)
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        by_target = {h.target: h for h in hosts}
        data = dataset(6, 3000, seed=13)
        total = sum(len(ids) for ids, _ in data.values())
        killed: dict = {}
        acked = 0
        with Client([h.target for h in hosts], retry_timeout=60) as c:
            # a refusal is answered by the gateway in use and moves nothing
            with pytest.raises(GatewayError) as err:
                c.recall("space-00", np.ones(16, np.float32), k=0)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and c.target == hosts[0].target

            for space, (ids, vecs) in sorted(data.items()):
                with c.stream(space) as s:
                    opened_on, sid = s.target, s.session_id
                    for lo in range(0, len(ids), 100):
                        if not killed and acked >= total // 3:
                            # mid-stream, between two batches of an open session
                            assert s.target == c.target
                            victim = by_target[s.target]
                            victim.kill9()
                            killed.update(victim=victim, space=space, sid=sid)
                        ack = s.send(ids[lo:lo + 100], vecs[lo:lo + 100])
                        assert ack.accepted == len(ids[lo:lo + 100]) and not ack.rejected, ack
                        acked += ack.accepted
                    if killed.get("space") == space:
                        assert s.session_id == sid, "the session was reopened, not resumed"
                        assert s.target != opened_on == killed["victim"].target
            assert acked == total and killed
            survivor = next(h for h in hosts if h is not killed["victim"])
            assert c.target == survivor.target

            wait_for(lambda: all_owned([survivor]), 60, 0.2, "the victim's partitions taken by the survivor")
            wait_held([survivor], data, 120, "every acknowledged observation held exactly once after failover")

            def membership():
                hs = c.info()["cluster"]["hosts"]
                return (not hs[killed["victim"].host_id]["live"]
                        and sorted(hs[survivor.host_id]["partitions"]) == list(range(P)))
            wait_for(membership, 30, 0.2, "Info: the victim not live, the survivor owning every partition")
            for space, (ids, vecs) in sorted(data.items()):
                res = c.recall(space, vecs[:2], k=3)
                assert res.complete and list(res.ids[:, 0]) == list(ids[:2]), space
    finally:
        stop_hosts(hosts, request)
