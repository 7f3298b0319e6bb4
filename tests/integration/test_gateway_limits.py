"""What the gateway refuses and what it must not let clients use up: k out
of range, oversized user input quoted in errors, spaces created by sessions
without data, a session table filled by abandoned streams. Real engines,
gRPC over loopback."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest

from tests.harness import observe_all, wait_for
from engine.client import Client
from engine.errors import GatewayError, InvalidInput
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from tests.gateway_helpers import RawStream, inserted, target, vectors

HUGE = 1_000_000  # far above gRPC's metadata limit, far below --grpc-max-message-bytes


def stub_of(ep) -> pb_grpc.EngramStub:
    return pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))


def recall_error(stub, **request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Recall(pb.RecallRequest(**request), timeout=30)
    return info.value


def test_recall_k_zero_or_above_max_k_is_refused_locally_and_over_grpc(engine_factory):
    ep = engine_factory(max_k=20)
    eng = ep.engine()
    observe_all(eng, "kspace", np.arange(50), vectors(50, 1))
    wait_for(lambda: inserted(ep, "kspace") == 50, 60, message="inserted")
    q = vectors(2, 2)
    for k in (0, 21):
        with pytest.raises(InvalidInput, match=rf"k={k} must be an integer in \[1, 20\]"):
            eng.recall("kspace", q, k=k)
    stub = stub_of(ep)
    for k in (0, 21):
        err = recall_error(stub, space="kspace", queries=q.tobytes(), k=k)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and f"k={k} must be" in err.details(), k
    # an unset k reads as 0 on the wire: refused too, not answered with a default
    err = recall_error(stub, space="kspace", queries=q.tobytes())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        list(stub.RecallStream(iter([pb.RecallRequest(space="kspace", queries=q.tobytes(), k=0)]), timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(target(ep)) as c:
        with pytest.raises(GatewayError) as gerr:
            c.recall("kspace", q, k=0)
        assert gerr.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert c.recall("kspace", q, k=20).ids.shape == (2, 20)  # the edge itself is fine
        assert c.recall("kspace", q, k=1).ids.shape == (2, 1)


def short_and_sized(text: str, n: int) -> bool:
    return len(text) < 300 and f"({n} chars)" in text


def test_huge_user_input_is_quoted_short_in_errors(engine_factory):
    ep = engine_factory()
    stub = stub_of(ep)
    big = "x" * HUGE
    raw = RawStream(stub)
    raw.send(init=pb.Init(space=big))
    with pytest.raises(grpc.RpcError) as info:
        raw.reply("ready")
    raw.close()
    # before: RESOURCE_EXHAUSTED "metadata size exceeds hard limit" instead of the error
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()[:200]
    assert short_and_sized(info.value.details(), HUGE) and "must match" in info.value.details()

    err = recall_error(stub, space="y" * HUGE, queries=vectors(1, 1).tobytes(), k=3)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()[:200]
    assert short_and_sized(err.details(), HUGE)

    with Client(target(ep), retry_timeout=5) as c:
        with pytest.raises(GatewayError) as gerr:
            c.observe("z" * HUGE, [1], vectors(1, 1))
        assert gerr.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert short_and_sized(gerr.value.details, HUGE)

    eng = ep.engine()
    with pytest.raises(InvalidInput) as local:
        eng.observe("w" * HUGE, [1], vectors(1, 1))
    assert short_and_sized(str(local.value), HUGE)
    with pytest.raises(InvalidInput) as local:
        eng.observe("space-ok", [1], vectors(1, 1), priority="p" * HUGE)
    assert short_and_sized(str(local.value), HUGE)
    # and the gateway still serves
    with Client(target(ep)) as c:
        assert c.observe("space-ok", [1], vectors(1, 1)).accepted == 1


def open_session(stub, space: str, **init) -> tuple[RawStream, int]:
    raw = RawStream(stub)
    raw.send(init=pb.Init(space=space, **init))
    return raw, raw.reply("ready").session_id


def test_sessions_without_data_create_no_space(engine_factory):
    ep = engine_factory(max_spaces=4)
    stub = stub_of(ep)
    eng = ep.engine()
    # eight sessions on new names, no batch: before, the fifth init already got RESOURCE_EXHAUSTED
    empty = [open_session(stub, f"empty-{i}") for i in range(8)]
    assert eng.inst.space_names() == {}
    with Client(target(ep)) as c:
        assert c.info()["spaces"] == {} and c.info()["active_sessions"] == 8
        res = c.recall("empty-0", vectors(2, 3), k=5)  # unknown space: empty, not an error
        assert res.ids.shape == (2, 0) and res.complete
        ack = c.observe("real-0", np.arange(100), vectors(100, 4))
        assert ack.accepted == 100 and not ack.rejected
        wait_for(lambda: c.info()["spaces"] == {"real-0": 100}, 60, message="real-0 inserted")
        # data into one of the empty sessions creates its space then
        first = empty[0][0].batch(1, [7, 8], vectors(2, 5))
        assert first.accepted == 2 and "empty-0" in eng.inst.space_names().values()
        for name in ("real-1", "real-2"):
            assert c.observe(name, [1], vectors(1, 6)).accepted == 1
        # the fifth space with data is refused, in the ack, naming the limit; nothing registered
        full = c.observe("real-3", [1, 2, 3], vectors(3, 7))
        assert (full.accepted, full.rejected) == (0, {"invalid_input": 3}) and "--max-spaces=4" in full.message
        assert sorted(eng.inst.space_names().values()) == ["empty-0", "real-0", "real-1", "real-2"]
    # a resume must name the space the session was opened with
    raw = RawStream(stub)
    raw.send(init=pb.Init(space="empty-2", resume_session_id=empty[1][1]))
    with pytest.raises(grpc.RpcError) as info:
        raw.reply("ready")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "another space" in info.value.details()
    raw.close()
    again, sid = open_session(stub, "empty-1", resume_session_id=empty[1][1])
    assert sid == empty[1][1]
    again.close()
    for raw, _ in empty:
        raw.close()


def sessions_total(ep, event: str) -> float:
    port = ep.exporter_port()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    line = f'engram_streaming_sessions_total{{event="{event}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


def test_abandoned_streams_do_not_lock_out_new_clients(engine_factory):
    ep = engine_factory(max_sessions=16)
    stub = stub_of(ep)
    abandoned = []
    for i in range(60):  # open, and go away without Close: each leaves its session for a resume
        raw, sid = open_session(stub, f"gone-{i % 3}")
        raw.close()
        abandoned.append(sid)
    assert sessions_total(ep, "evicted") == 60 - 16
    with Client(target(ep)) as c:
        ack = c.observe("newcomer", np.arange(200), vectors(200, 8))
        assert ack.accepted == 200 and not ack.rejected
        wait_for(lambda: inserted(ep, "newcomer") == 200, 60, message="the new client's data inserted")
        assert c.info()["active_sessions"] == 16
    assert sessions_total(ep, "evicted") == 60 - 16 + 1
    # the oldest abandoned sessions were evicted; resuming one says so
    raw = RawStream(stub)
    raw.send(init=pb.Init(space="gone-0", resume_session_id=abandoned[0]))
    with pytest.raises(grpc.RpcError) as info:
        raw.reply("ready")
    raw.close()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "was evicted" in info.value.details() and "--max-sessions=16" in info.value.details()
    # the newest is still there and resumes
    last, sid = open_session(stub, f"gone-{59 % 3}", resume_session_id=abandoned[-1])
    assert sid == abandoned[-1]

    # sessions with a live stream are never evicted: the refusal says what to do
    held = [last] + [open_session(stub, f"held-{i}")[0] for i in range(15)]
    raw = RawStream(stub)
    raw.send(init=pb.Init(space="one-more"))
    with pytest.raises(grpc.RpcError) as info:
        raw.reply("ready")
    raw.close()
    text = info.value.details()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, text
    assert "close sessions" in text and "--max-sessions=16" in text and "retry in" in text
    for r in held:
        r.close()
