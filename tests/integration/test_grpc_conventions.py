"""What generic gRPC tooling expects of the gateway: health, reflection,
keepalive, the bearer scheme; and the acks' retry-after and session-id texts
as docs/clients.md states them. Real engines over loopback."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2


from engine.gateway import conventions
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from tests.harness import wait_for
from tests.gateway_helpers import RawStream, target, vectors
from tests.integration.test_gateway import _stop_workers

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                     timeout=5).status


# ---------------------------------------------------------------- unit: no processes
def test_health_publisher_follows_readiness_and_only_logs_changes():
    state = {"ok": False}
    pub = conventions.HealthPublisher(inst=None, ready=lambda inst: (state["ok"], "because"))
    ctx = None
    check = lambda name: pub.servicer.Check(health_pb2.HealthCheckRequest(service=name), ctx).status  # noqa: E731
    assert [check(n) for n in conventions.HEALTH_SERVICES] == [NOT_SERVING, NOT_SERVING]
    state["ok"] = True
    assert pub.update() is True
    assert [check(n) for n in ("", "engram.v1.Engram")] == [SERVING, SERVING]
    state["ok"] = False
    pub.update()
    assert check("engram.v1.Engram") == NOT_SERVING
    state["ok"] = True
    pub.update()
    pub.shutdown()  # stopping: NOT_SERVING for good, whatever readiness says
    pub.update()
    assert check("") == NOT_SERVING


def test_keepalive_policy_accepts_one_second_client_pings_with_keys_grpc_knows():
    opts = dict(conventions.KEEPALIVE_OPTIONS)
    assert opts["grpc.keepalive_permit_without_calls"] == 1
    assert opts["grpc.http2.min_ping_interval_without_data_ms"] <= 1000
    assert opts["grpc.http2.max_ping_strikes"] >= 1  # abusive clients are still cut off
    # gRPC silently ignores an unknown key: each must be a string of its core library.
    core = b"".join(p.read_bytes() for p in Path(grpc.__file__).parent.glob("_cython/*.so"))
    for key in opts:
        assert key.encode() in core, key


# ---------------------------------------------------------------- real engines
def test_health_serving_when_ready_not_serving_while_draining(engine_factory):
    ep = engine_factory()
    channel = grpc.insecure_channel(target(ep))
    wait_for(lambda: health_of(channel, "") == SERVING, 30, message="overall SERVING")
    assert health_of(channel, "engram.v1.Engram") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        health_of(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Something queued that cannot drain (workers stopped): SIGTERM leaves the engine draining.
    _stop_workers(ep, signal.SIGSTOP)
    try:
        ep.engine().observe("drain", np.arange(50, dtype=np.uint64), vectors(50, 3))
        os.kill(int(ep.engine().inst.header.sup_pid), signal.SIGTERM)
        wait_for(lambda: health_of(channel, "engram.v1.Engram") == NOT_SERVING, 10,
                 message="NOT_SERVING while draining")
        assert health_of(channel, "") == NOT_SERVING
    finally:
        _stop_workers(ep, signal.SIGCONT)
    channel.close()


def _reflect(channel, method: str, request: reflection_pb2.ServerReflectionRequest):
    call = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return next(iter(call(iter([request]), timeout=10)))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_service(engine_factory, version):
    ep = engine_factory()
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(target(ep)) as channel:
        listed = _reflect(channel, method, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"engram.v1.Engram", "grpc.health.v1.Health"} <= names
        described = _reflect(channel, method,
                             reflection_pb2.ServerReflectionRequest(file_containing_symbol="engram.v1.Engram"))
        from google.protobuf import descriptor_pb2
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in described.file_descriptor_response.file_descriptor_proto]
        assert any(f.package == "engram.v1" and [s.name for s in f.service] == ["Engram"] for f in files)


def test_silent_stream_with_client_pings_every_second_stays_open(engine_factory):
    ep = engine_factory()
    options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(target(ep), options=options) as channel:
        stream = RawStream(pb_grpc.EngramStub(channel))
        stream.send(init=pb.Init(space="pings"))
        stream.reply("ready")
        # gRPC core's server default would end this connection after the third
        # early ping (about 3 s); hold it silent well past that.
        deadline = time.monotonic() + 10
        wait_for(lambda: time.monotonic() > deadline or stream.call.done(), 15, interval=0.2,
                 message="10 s of silence")
        assert not stream.call.done(), stream.call.details() if stream.call.done() else ""
        ack = stream.batch(1, [1, 2], vectors(2, 5))
        assert ack.accepted == 2
        stream.close()


def test_full_lane_at_normal_state_carries_retry_after(engine_factory):
    # high lane: 100 in all; the other lanes keep the engine-wide pressure low
    ep = engine_factory(capacity_high=100, capacity_normal=100_000, capacity_low=100_000)
    stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
    _stop_workers(ep, signal.SIGSTOP)
    try:
        s = RawStream(stub)
        s.send(init=pb.Init(space="lane-full", priority=pb.PRIORITY_HIGH))
        s.reply("ready")
        ack = s.batch(1, np.arange(300), vectors(300, 1))
        assert ack.rejected["over_capacity"] > 0 and ack.backpressure == pb.BACKPRESSURE_NORMAL, ack
        assert ack.retry_after_ms > 0, ack
        assert ack.count == 300 and ack.accepted + sum(ack.rejected.values()) == ack.count
        assert ack.next_sequence == 1 + ack.accepted
        s.close()
    finally:
        _stop_workers(ep, signal.SIGCONT)


def test_session_ids_in_errors_are_decimal_as_on_the_wire(engine_factory):
    ep = engine_factory()
    stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
    s = RawStream(stub)
    s.send(init=pb.Init(space="ids", resume_session_id=2**64 - 1))
    with pytest.raises(grpc.RpcError) as info:
        s.reply("ready")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "session 18446744073709551615 " in info.value.details()


def test_bearer_scheme_is_case_insensitive_and_health_needs_no_token(engine_factory, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    ep = engine_factory(auth_token_file=str(token_file))
    with grpc.insecure_channel(target(ep)) as channel:
        stub = pb_grpc.EngramStub(channel)
        for header in ("Bearer tok-123", "bearer tok-123", "BEARER  tok-123"):
            assert stub.Info(pb.InfoRequest(), metadata=[("authorization", header)], timeout=5).workers == 2
        for header in ("Bearer tok-12", "Basic tok-123", "tok-123"):
            with pytest.raises(grpc.RpcError) as info:
                stub.Info(pb.InfoRequest(), metadata=[("authorization", header)], timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wait_for(lambda: health_of(channel, "") == SERVING, 30, message="health without a token")
