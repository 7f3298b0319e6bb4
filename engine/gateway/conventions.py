"""What generic gRPC tooling expects of a server: health, reflection, keepalive.

- **Health** (``grpc.health.v1.Health``, from grpcio-health-checking): the
  overall status (service ``""``) and ``engram.v1.Engram`` follow the
  engine's readiness, as ``/health/ready`` on the exporter does: SERVING
  while every worker runs, admission is open, the state is below overloaded
  and the logs are writable; NOT_SERVING otherwise (draining included). The
  gateway's main thread calls ``HealthPublisher.update`` every tick; Watch
  callers hear of each change. Kubernetes' gRPC probe and load balancers
  send no metadata, so the token check lets health calls through
  (``engine.gateway.server.TokenAuth``).
- **Reflection**: ``grpcio-reflection`` implements ``grpc.reflection.v1alpha``;
  ``grpc.reflection.v1`` has the same messages field for field (only the
  proto package differs), so the same servicer answers it too, for tools
  that ask v1 first.
- **Keepalive**: gRPC core's server defaults (doc/keepalive.md in grpc/grpc)
  treat a client ping less than 5 minutes after the previous one, on a
  connection that sends no data, as a "ping strike" and close the
  connection after two. An ``ObserveStream`` waiting out a pause sends no
  data, and clients behind NATs and proxies ping far more often than that.
  ``KEEPALIVE_OPTIONS`` accepts pings down to ``MIN_CLIENT_PING_MS`` apart, with
  or without calls, and has the server ping idle connections itself so a
  vanished client's stream ends within ``KEEPALIVE_TIME_MS +
  KEEPALIVE_TIMEOUT_MS``.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from engine.control import admission, pressure
from engine.control.instance import Instance
from engine.rpc import engram_pb2 as pb

log = logging.getLogger("engram.gateway")

SERVICE = pb.DESCRIPTOR.services_by_name["Engram"].full_name  # "engram.v1.Engram"
HEALTH_SERVICES = ("", SERVICE)

# Clients may ping every second; half that is accepted so timer jitter on a
# 1 s client never counts as a strike.
MIN_CLIENT_PING_MS = 500
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; its string has
    # no "recv" in it, and gRPC ignores keys it does not know.
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Our own pings must go on while a stream is silent, or a dead client
    # on a paused stream would only be noticed by the session idle timeout.
    ("grpc.http2.max_pings_without_data", 0),
]


def readiness(inst: Instance) -> tuple[bool, str]:
    """Whether the engine takes work now, and why not."""
    hdr = inst.header
    if hdr.admission_closed or hdr.draining:
        return False, "draining for shutdown"
    if not hdr.ready:
        return False, "not every worker is running"
    if int(hdr.bp_state) >= admission.OVERLOADED:
        return False, "backpressure overloaded"
    blocked = pressure.unwritable(inst)
    if blocked:
        return False, blocked
    return True, "ready"


class HealthPublisher:
    """Keeps the health servicer's statuses equal to ``readiness``.

    Single writer: the gateway's main thread (``update``); the servicer's
    own lock guards what the handler threads read."""

    def __init__(self, inst: Instance, ready=readiness):
        self.inst = inst
        self.ready = ready
        self.servicer = health.HealthServicer()
        self.serving: bool | None = None
        self.update()

    def update(self) -> bool:
        ok, reason = self.ready(self.inst)
        if ok != self.serving:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in HEALTH_SERVICES:
                self.servicer.set(name, status)
            if self.serving is not None:
                log.info("gRPC health: %s (%s)", "SERVING" if ok else "NOT_SERVING", reason)
            self.serving = ok
        return ok

    def shutdown(self) -> None:
        """NOT_SERVING for everything, for good: the server is about to stop."""
        self.servicer.enter_graceful_shutdown()


def add_to_server(server: grpc.Server, publisher: HealthPublisher) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(publisher.servicer, server)
    names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection")
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "grpc.reflection.v1.ServerReflection", {"ServerReflectionInfo": v1}),))
