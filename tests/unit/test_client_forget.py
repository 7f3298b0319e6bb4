"""``forget`` in the Python clients against in-process fake gateways (gRPC
servers on threads, no engine): the unary call's retries of an
over_capacity remainder and where it may go, and a session's numbered forget
batches, resent after a lost ack like batches of observations."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from engine.client import AsyncClient, Client
from engine.errors import GatewayError, InvalidInput
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc

DIM = 4


class ForgetGateway(pb_grpc.EngramServicer):
    """Holds ids per session-less space; ``capacity`` caps the ids one unary
    call accepts (the rest over_capacity); ``down`` fails every call
    UNAVAILABLE; ``lose_after`` applies that many more stream batches and
    then dies before acking the last."""

    def __init__(self):
        self.held = set(range(100))
        self.requests: list[tuple[pb.ForgetRequest, float | None]] = []
        self.messages: list[tuple[str, int, int]] = []     # (kind, first, n) of each stream batch
        self.capacity: int | None = None
        self.down = False
        self.lose_after: int | None = None
        self.next = 1
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        pb_grpc.add_EngramServicer_to_server(self, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _gone(self, context):
        if self.down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is gone")

    def _take(self, ids) -> int:
        with self.lock:
            not_found = sum(int(i) not in self.held for i in ids)
            self.held.difference_update(int(i) for i in ids)
            return not_found

    def Forget(self, request, context):
        self._gone(context)
        self.requests.append((request, context.time_remaining()))
        ids = np.frombuffer(request.ids, "<u8")
        if request.space == "Bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "memory space 'Bad' must match [a-z0-9_-]{3,64}")
        n = len(ids) if self.capacity is None else min(self.capacity, len(ids))
        rejected = {"over_capacity": len(ids) - n} if n < len(ids) else {}
        return pb.ForgetResponse(count=len(ids), accepted=n, not_found=self._take(ids[:n]), rejected=rejected,
                                 retry_after_ms=20 if rejected else 0, applied=not request.no_wait)

    def ObserveStream(self, it, context):
        self._gone(context)
        init = next(it).init
        yield pb.ServerMessage(ready=pb.Ready(session_id=77, next_sequence=self.next,
                                              resumed=bool(init.resume_session_id)))
        for msg in it:
            self._gone(context)
            kind = msg.WhichOneof("kind")
            if kind == "close":
                yield pb.ServerMessage(closed=pb.Closed(next_sequence=self.next))
                return
            b = getattr(msg, kind)
            ids = np.frombuffer(b.ids, "<u8")
            self.messages.append((kind, b.first_sequence, len(ids)))
            dup = max(0, min(len(ids), self.next - b.first_sequence))
            not_found = self._take(ids[dup:]) if kind == "forget" else 0
            self.next = max(self.next, b.first_sequence + len(ids))
            if self.lose_after is not None:
                self.lose_after -= 1
                if self.lose_after < 0:  # applied; the ack is lost with the gateway
                    self.down, self.lose_after = True, None
                    self._gone(context)
            yield pb.ServerMessage(ack=pb.BatchAck(
                first_sequence=b.first_sequence, count=len(ids), accepted=len(ids) - dup, not_found=not_found,
                rejected={"duplicate": dup} if dup else {}, next_sequence=self.next))

    def stop(self):
        self.server.stop(0)


@pytest.fixture
def gateways():
    made = []

    def make():
        gw = ForgetGateway()
        made.append(gw)
        return gw
    yield make
    for gw in made:
        gw.stop()


def test_forget_waits_by_default_with_the_calls_deadline(gateways):
    a = gateways()
    with Client(a.target, timeout=7.0) as c:
        res = c.forget("space", [1, 2, 500])
        assert (res.accepted, res.not_found, res.rejected, res.applied) == (3, 1, {}, True)
        req, remaining = a.requests[-1]
        assert not req.no_wait and 6.0 < remaining < 7.1  # (gRPC rounds deadlines)
        res = c.forget("space", np.array([3], np.uint64), wait=False, timeout=2.0)
        assert (res.accepted, res.applied) == (1, False)
        req, remaining = a.requests[-1]
        assert req.no_wait and 1.0 < remaining < 2.1


def test_an_over_capacity_remainder_is_sent_again_and_the_counts_add_up(gateways):
    a = gateways()
    a.capacity = 2
    with Client(a.target, retry_timeout=10) as c:
        res = c.forget("space", [1, 2, 3, 4, 200])
    assert (res.accepted, res.not_found, res.rejected, res.applied) == (5, 1, {}, True)
    sent = [np.frombuffer(r.ids, "<u8").tolist() for r, _ in a.requests]
    assert sent == [[1, 2, 3, 4, 200], [3, 4, 200], [200]]


def test_what_is_still_refused_at_retry_timeout_is_reported(gateways):
    a = gateways()
    a.capacity = 0
    with Client(a.target, retry_timeout=0.2) as c:
        res = c.forget("space", [1, 2])
    assert res.accepted == 0 and res.rejected == {"over_capacity": 2} and len(a.requests) >= 2


def test_refusals_are_raised_and_bad_ids_never_leave_the_client(gateways):
    a = gateways()
    with Client(a.target) as c:
        with pytest.raises(GatewayError) as err:
            c.forget("Bad", [1])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "must match" in err.value.details
        with pytest.raises(InvalidInput):
            c.forget("space", [-1])
        with pytest.raises(InvalidInput):
            c.forget("space", [0.5])
    assert len(a.requests) == 1


def test_a_forget_stays_with_its_gateway(gateways):
    a, b = gateways(), gateways()
    a.down = True
    with Client([a.target, b.target], retry_timeout=0.3) as c:
        with pytest.raises(GatewayError) as err:
            c.forget("space", [1])
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.transport
        assert b.requests == []  # another single-host engine holds other data
        assert c.target == b.target  # other calls move on
        assert c.forget("space", [1]).accepted == 1 and len(b.requests) == 1


def test_session_forget_batches_are_numbered_with_the_observations(gateways):
    a = gateways()
    with Client(a.target) as c, c.stream("space") as s:
        assert s.send(np.arange(200, 203, dtype=np.uint64), np.ones((3, DIM), np.float32)).accepted == 3
        res = s.forget([1, 2, 300])
        assert (res.accepted, res.not_found, res.rejected, res.applied) == (3, 1, {}, False)
        assert s.next_sequence == 7
        assert s.forget(5).accepted == 1 and s.next_sequence == 8
    assert a.messages == [("batch", 1, 3), ("forget", 4, 3), ("forget", 7, 1)]


def test_a_forget_batch_whose_ack_was_lost_is_resent_and_counted_once(gateways):
    a = gateways()
    with Client(a.target, retry_timeout=10) as c, c.stream("space") as s:
        assert s.forget([1]).accepted == 1
        a.lose_after = 0

        def back():  # the gateway comes back (a restart); the session resumes there
            while not a.down:
                threading.Event().wait(0.01)
            a.down = False
        threading.Thread(target=back, daemon=True).start()
        res = s.forget([2, 3])
        assert (res.accepted, res.rejected) == (2, {})  # the resend's duplicate is our own first attempt
        assert s.next_sequence == 4
    assert a.messages == [("forget", 1, 1), ("forget", 2, 2), ("forget", 2, 2)]


def test_the_async_client_forgets_the_same_way(gateways):
    a = gateways()
    a.capacity = 1

    async def main():
        async with AsyncClient(a.target, retry_timeout=10) as c:
            unary = await c.forget("space", [1, 2])
            async with c.stream("space") as s:
                batch = await s.forget([3, 4, 400])
                return unary, batch, s.next_sequence
    unary, batch, nxt = asyncio.run(main())
    assert (unary.accepted, unary.not_found, unary.applied) == (2, 0, True) and len(a.requests) == 2
    assert (batch.accepted, batch.not_found, batch.applied, nxt) == (3, 1, False, 4)
    assert a.messages == [("forget", 1, 3)]
