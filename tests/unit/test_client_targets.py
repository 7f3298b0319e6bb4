"""Several targets in the Python client: the rotation policy (injected clock,
no sockets), which failures move to another gateway, and where a session may
go, against in-process fake gateways (gRPC servers on threads, no engine)."""

from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from engine.client import AsyncClient, Client, common, targets
from engine.errors import GatewayError, SessionLost
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc

DIM = 4


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the policy ------------------------------------------------------------------------
@pytest.mark.parametrize("given", ["a:1,b:2, c:3", ["a:1", "b:2", "c:3"], ("a:1", " b:2", "c:3 ")])
def test_targets_from_a_list_or_a_comma_separated_string(given):
    assert targets.parse(given) == ("a:1", "b:2", "c:3")
    assert targets.parse("127.0.0.1:50051") == ("127.0.0.1:50051",)


@pytest.mark.parametrize("bad", ["", "a:1,,b:2", [], ["a:1", " "]])
def test_empty_targets_are_refused_with_the_value(bad):
    with pytest.raises(ValueError, match="targets"):
        targets.parse(bad)


def test_rotation_tries_every_target_at_once_then_backs_off_per_round():
    clock = Clock()
    ts = targets.Targets("a:1,b:2,c:3")
    plan = ts.attempts(clock.t + 10, clock=clock)
    tried, waits = [], []
    for _ in range(7):
        i = plan.target()
        tried.append(i)
        waits.append(plan.failed(i))
    assert tried == [0, 1, 2, 0, 1, 2, 0]
    assert waits == [0.0, 0.0, 0.05, 0.0, 0.0, 0.1, 0.0]
    assert ts.current == 1  # shared: the client's next call starts there


def test_one_target_backs_off_as_the_single_target_client_always_did():
    clock = Clock()
    plan = targets.Targets("a:1").attempts(clock.t + 60, clock=clock)
    waits = [plan.failed(plan.target()) for _ in range(7)]
    assert waits == [targets.backoff(a) for a in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_the_deadline_bounds_waits_and_ends_the_retries():
    clock = Clock()
    plan = targets.Targets("a:1,b:2").attempts(clock.t + 0.03, clock=clock)
    assert plan.failed(0) == 0.0
    assert plan.failed(1) == pytest.approx(0.03)  # backoff 0.05, but only 0.03 s left
    clock.t += 0.03
    assert plan.failed(0) is None


def test_a_pinned_plan_stays_but_moves_the_clients_current_target():
    clock = Clock()
    ts = targets.Targets(["a:1", "b:2", "c:3"])
    plan = ts.attempts(clock.t + 10, pinned=0, clock=clock)
    waits = []
    for _ in range(3):
        assert plan.target() == 0
        waits.append(plan.failed(0))
    assert waits == [0.05, 0.1, 0.2]
    assert ts.current == 1  # other calls go on elsewhere


def test_two_calls_failing_on_the_same_target_move_it_once():
    ts = targets.Targets("a:1,b:2,c:3")
    first, second = ts.attempts(1e18), ts.attempts(1e18)
    first.failed(first.target())
    second.failed(second.target())
    assert ts.current == 1 and first.target() == second.target() == 1


def test_a_plan_may_start_at_a_sessions_own_target():
    ts = targets.Targets("a:1,b:2,c:3")
    plan = ts.attempts(1e18, start=2)
    assert plan.target() == 2
    plan.failed(2)
    assert plan.target() == 0  # current was 0 already: it is where the next try goes


# -- what is retried -------------------------------------------------------------------
class FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return f"fake {self._code.name}"


def _run(ts, codes, stream=False):
    """retry() over ``ts`` where attempt k fails with ``codes[k]`` (None: succeeds)."""
    seen = []

    def call(index, attempt):
        seen.append(index)
        code = codes[len(seen) - 1]
        if code is None:
            return index
        raise code if isinstance(code, grpc.RpcError) else FakeRpcError(code)
    got = common.retry(call, ts.attempts(1e18), stream=stream, sleep=lambda s: None)
    return got, seen


def test_unavailable_moves_to_the_next_target_and_the_call_is_retried_there():
    ts = targets.Targets("a:1,b:2")
    assert _run(ts, [grpc.StatusCode.UNAVAILABLE, None]) == (1, [0, 1])
    assert ts.current == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL])
def test_application_errors_are_raised_at_once_on_the_same_target(code):
    ts = targets.Targets("a:1,b:2")
    with pytest.raises(GatewayError) as err:
        _run(ts, [code, None])
    assert err.value.code == code and not err.value.transport
    assert ts.current == 0


def test_deadline_exceeded_moves_only_when_there_is_another_target():
    ts = targets.Targets("a:1,b:2")
    assert _run(ts, [grpc.StatusCode.DEADLINE_EXCEEDED, None]) == (1, [0, 1])
    with pytest.raises(GatewayError) as err:  # one target: final, as it always was
        _run(targets.Targets("a:1"), [grpc.StatusCode.DEADLINE_EXCEEDED, None])
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_on_a_stream_only_the_clients_own_timeout_counts_as_a_lost_gateway():
    # the gateway's DEADLINE_EXCEEDED on a stream means the session expired: final
    with pytest.raises(GatewayError):
        _run(targets.Targets("a:1,b:2"), [grpc.StatusCode.DEADLINE_EXCEEDED, None], stream=True)
    got = _run(targets.Targets("a:1"), [common.Unanswered("no answer"), None], stream=True)
    assert got == (0, [0, 0])


def test_async_retry_follows_the_same_policy():
    ts = targets.Targets("a:1,b:2")
    seen = []

    async def call(index, attempt):
        seen.append(index)
        if index == 0:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(GatewayError) as err:
        asyncio.run(common.aretry(call, ts.attempts(1e18)))
    assert seen == [0, 1] and err.value.code == grpc.StatusCode.INVALID_ARGUMENT and ts.current == 1


def test_clients_show_their_targets_read_only():
    with Client(["127.0.0.1:9", "127.0.0.1:10"]) as c:
        assert c.targets == ("127.0.0.1:9", "127.0.0.1:10") and c.target == "127.0.0.1:9"
        with pytest.raises(AttributeError):
            c.target = "127.0.0.1:10"
        assert c.stream("abc").target is None

    async def aio():
        async with AsyncClient("127.0.0.1:9, 127.0.0.1:10") as c:
            return c.targets
    assert asyncio.run(aio()) == ("127.0.0.1:9", "127.0.0.1:10")


# -- against fake gateways ------------------------------------------------------------
class FakeGateway(pb_grpc.EngramServicer):
    """Answers like a gateway; ``down`` makes every call fail UNAVAILABLE,
    ``lose_after`` records that many more batches and then goes down
    without acking the last (an ack lost with its gateway), ``hang`` leaves
    batches unanswered."""

    def __init__(self, cluster: str = "", name: str = "a", log: set | None = None):
        self.cluster, self.name = cluster, name
        self.log = set() if log is None else log  # (session, first sequence) stored: the cluster's log
        self.inits: list[pb.Init] = []
        self.batches: list[tuple[int, int, int]] = []   # (session, first, n)
        self.recalls = 0
        self.down = False
        self.lose_after: int | None = None
        self.hang = threading.Event()
        self.release = threading.Event()
        self.next: dict[int, int] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        pb_grpc.add_EngramServicer_to_server(self, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _gone(self, context):
        if self.down:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"gateway {self.name} is gone")

    def Info(self, request, context):
        self._gone(context)
        return pb.InfoResponse(state="running", cluster=pb.ClusterInfo(name=self.cluster, host_id=self.name))

    def Recall(self, request, context):
        self._gone(context)
        self.recalls += 1
        if request.k == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 256")
        return pb.RecallResponse(queries=1, k=0, complete=True)

    def ObserveStream(self, it, context):
        self._gone(context)
        init = next(it).init
        self.inits.append(init)
        sid = init.resume_session_id or 4242
        if init.resume_session_id and self.cluster:
            self.next[sid] = max(self.next.get(sid, 1), init.resume_next_sequence)
        self.next.setdefault(sid, 1)
        yield pb.ServerMessage(ready=pb.Ready(session_id=sid, next_sequence=self.next[sid], cluster=self.cluster,
                                              resumed=bool(init.resume_session_id)))
        for msg in it:
            self._gone(context)
            if msg.WhichOneof("kind") == "close":
                yield pb.ServerMessage(closed=pb.Closed(next_sequence=self.next[sid]))
                return
            b = msg.batch
            n = len(b.ids) // 8
            self.batches.append((sid, b.first_sequence, n))
            if self.hang.is_set():
                self.release.wait(10)
                return
            # the session's own prefix check, then the log's message ids (as the cluster front does)
            dup = max(0, min(n, self.next[sid] - b.first_sequence))
            if dup < n:
                key = (sid, b.first_sequence + dup)
                if key in self.log:
                    dup = n
                self.log.add(key)
            self.next[sid] = max(self.next[sid], b.first_sequence + n)
            if self.lose_after is not None:
                self.lose_after -= 1
                if self.lose_after < 0:  # stored, and the gateway dies before its ack
                    self.down = True
                    self._gone(context)
            rejected = {"duplicate": dup} if dup else {}
            yield pb.ServerMessage(ack=pb.BatchAck(first_sequence=b.first_sequence, count=n, accepted=n - dup,
                                                   rejected=rejected, next_sequence=self.next[sid]))

    def stop(self):
        self.release.set()
        self.server.stop(0)


@pytest.fixture
def gateways(request):
    made = []

    def make(**kw):
        gw = FakeGateway(**kw)
        made.append(gw)
        return gw
    yield make
    for gw in made:
        gw.stop()


def batch(lo: int, n: int = 10):
    return np.arange(lo, lo + n, dtype=np.uint64), np.ones((n, DIM), np.float32)


def test_application_errors_do_not_rotate_transport_failures_do(gateways):
    a, b = gateways(name="a"), gateways(name="b")
    with Client([a.target, b.target], retry_timeout=5) as c:
        with pytest.raises(GatewayError) as err:
            c.recall("space", np.ones(DIM, np.float32), k=0)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert c.target == a.target and (a.recalls, b.recalls) == (1, 0)
        a.down = True
        assert c.recall("space", np.ones(DIM, np.float32), k=1).complete
        assert c.target == b.target and b.recalls == 1
        assert c.info()["cluster"] is None  # a single host reports no cluster


def test_a_cluster_session_resumes_on_the_next_gateway_with_its_numbers(gateways):
    log = set()
    a, b = gateways(cluster="c1", name="a", log=log), gateways(cluster="c1", name="b", log=log)
    with Client(f"{a.target},{b.target}", retry_timeout=10) as c, c.stream("space") as s:
        assert s.target == a.target and s.cluster == "c1"
        assert s.send(*batch(0)).accepted == 10
        a.lose_after = 0  # the next batch is stored through a; its ack is lost with the gateway
        ack = s.send(*batch(10))
        assert ack.accepted == 10 and not ack.rejected  # a resend's duplicate is our own earlier batch
        assert s.target == b.target and s.session_id == 4242 and s.next_sequence == 21
        assert b.inits[0].resume_session_id == 4242 and b.inits[0].resume_next_sequence == 11
        assert a.batches[-1] == (4242, 11, 10) and b.batches == [(4242, 11, 10)]
        assert s.send(*batch(20)).accepted == 10 and b.batches[-1] == (4242, 21, 10)


def test_an_unanswered_batch_moves_a_cluster_session_on(gateways):
    a, b = gateways(cluster="c1", name="a"), gateways(cluster="c1", name="b")
    with Client([a.target, b.target], retry_timeout=10, timeout=0.5) as c, c.stream("space") as s:
        a.hang.set()
        assert s.send(*batch(0)).accepted == 10
        assert s.target == b.target and b.batches == [(4242, 1, 10)]


def test_a_single_host_session_never_moves_to_another_engine(gateways):
    a, b = gateways(name="a"), gateways(name="b")
    with Client([a.target, b.target], retry_timeout=0.5) as c:
        s = c.stream("space").__enter__()
        assert s.send(*batch(0)).accepted == 10
        a.lose_after = 0
        with pytest.raises(SessionLost) as err:
            s.send(*batch(10))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.unacknowledged == range(11, 21)
        assert "single-host" in err.value.details and a.target in err.value.details
        assert b.inits == [] and b.batches == []  # neither the session nor the batch went to b
        assert s.session_id == 0
        # the next send opens a new session, on the target that answers
        assert s.send(*batch(10)).accepted == 10
        assert s.target == b.target and b.inits[0].resume_session_id == 0 and b.batches == [(4242, 1, 10)]


def test_one_target_single_host_keeps_todays_error_and_session(gateways):
    a = gateways(name="a")
    with Client(a.target, retry_timeout=0.3) as c:
        s = c.stream("space").__enter__()
        s.send(*batch(0))
        a.down = True
        with pytest.raises(GatewayError) as err:
            s.send(*batch(10))
        assert not isinstance(err.value, SessionLost) and err.value.code == grpc.StatusCode.UNAVAILABLE
        assert s.session_id == 4242 and s.next_sequence == 11  # still there to resume


def test_the_async_session_moves_the_same_way(gateways):
    log = set()
    a, b = gateways(cluster="c1", name="a", log=log), gateways(cluster="c1", name="b", log=log)

    async def main():
        async with AsyncClient([a.target, b.target], retry_timeout=10) as c:
            async with c.stream("space") as s:
                await s.send(*batch(0))
                a.lose_after = 0
                ack = await s.send(*batch(10))
                return ack, s.target, s.session_id
    ack, where, sid = asyncio.run(main())
    assert ack.accepted == 10 and where == b.target and sid == 4242
    assert b.inits[0].resume_next_sequence == 11
