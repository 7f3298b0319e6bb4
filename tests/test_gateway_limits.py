"""What the gateway refuses, and that refusals reach the caller whole: k out
of range, oversized user input quoted in errors. Real engines, gRPC over
loopback."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conftest import observe_all, wait_for
from engine.client import Client
from engine.errors import GatewayError, InvalidInput
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from gateway_helpers import RawStream, inserted, target, vectors

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
