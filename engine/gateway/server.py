"""The gateway process: a child of the supervisor serving ``Gateway`` over gRPC.

``build_server`` assembles the gRPC server (message limits, keepalive, the
bearer-token check, TLS, health and reflection from
``engine.gateway.conventions``); ``main`` is the forked child's entry point: it repairs sessions a
dead predecessor left half-advanced, serves, and runs the main thread's
periodic work until the supervisor goes away. The service itself is
``engine.gateway.service``.
"""

from __future__ import annotations

import hmac
import logging
import os
import signal
from concurrent import futures

import grpc

from engine import child, identity
from engine.control.instance import Instance
from engine.control.records import GATEWAY
from engine.gateway import conventions
from engine.gateway.service import Gateway
from engine.signals import SignalQueue
from engine.rpc import engram_pb2_grpc as pb_grpc

log = logging.getLogger("engram.gateway")

TICK_S = 0.25
# Calls still running at a stop get this long to end (streams end within one
# poll of stop_streams); then gRPC cancels them.
STOP_GRACE_S = 2.0
EXTRA_THREADS = 16         # handler threads beyond --max-sessions (unary calls, recall streams)


class TokenAuth(grpc.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>``, except health
    checks: probes (Kubernetes' gRPC probe, load balancers) cannot send
    metadata, and a status reveals nothing a caller could misuse.

    The scheme is matched without regard to case, as HTTP authentication
    schemes are (RFC 9110 §11.1); the token itself is compared exactly, in
    constant time."""

    OPEN_PREFIX = "/grpc.health.v1.Health/"

    def __init__(self, token: str):
        self.expected = token.encode()

    def accepts(self, header: str) -> bool:
        scheme, _, credentials = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.expected)

    def intercept_service(self, continuation, details):
        got = dict(details.invocation_metadata).get("authorization", "")
        handler = continuation(details)
        if handler is None or details.method.startswith(self.OPEN_PREFIX) or self.accepts(got):
            return handler
        text = "missing bearer token" if not got else "wrong bearer token"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, text)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def read_token(path: str) -> str:
    with open(path) as fh:
        token = fh.read().strip()
    if not token:
        raise ValueError(f"--auth-token-file {path} is empty")
    return token


def build_server(gw: Gateway, p: dict, health: conventions.HealthPublisher) -> tuple[grpc.Server, int]:
    """A started server bound to ``--grpc-addr``; returns it and its port."""
    size = p.grpc_max_message_bytes
    interceptors = [TokenAuth(read_token(p.auth_token_file))] if p.auth_token_file else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=p.max_sessions + EXTRA_THREADS,
                                                    thread_name_prefix="engram-gateway"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", size),
                                  ("grpc.max_send_message_length", size),
                                  ("grpc.so_reuseport", 0), *conventions.KEEPALIVE_OPTIONS],
                         maximum_concurrent_rpcs=p.max_sessions + EXTRA_THREADS)
    pb_grpc.add_EngramServicer_to_server(gw, server)
    conventions.add_to_server(server, health)
    if p.tls_cert:
        with open(p.tls_key, "rb") as fh:
            key = fh.read()
        with open(p.tls_cert, "rb") as fh:
            cert = fh.read()
        port = server.add_secure_port(p.grpc_addr, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(p.grpc_addr)
    if not port:
        raise OSError(f"--grpc-addr={p.grpc_addr}: cannot listen there")
    server.start()
    return server, port


def main(name: str, inherited: list[int] = (), supervisor_pid: int = 0) -> None:
    """Entry point in the forked child."""
    from metrics.writer import MetricWriter, NullWriter
    child.prepare(inherited, supervisor_pid)
    identity.become("gateway", name)  # before gRPC's threads; the port follows
    inst = Instance.attach(name, GATEWAY)
    p = inst.params
    writer = NullWriter() if p.no_metrics else MetricWriter(inst.metrics, inst.metrics.row_map.GATEWAY)
    gw = Gateway(inst, writer)
    repaired = gw.sessions.repair(inst.rings)
    if repaired:
        log.info("completed %d session batch(es) a previous gateway published as it died", repaired)
    health = conventions.HealthPublisher(inst)
    server, port = build_server(gw, p, health)
    inst.header.gateway_pid = os.getpid()
    inst.header.gateway_port = port
    identity.become("gateway", name, port=port)
    log.info("gateway serving gRPC on %s (port %d), %d session(s) carried over", p.grpc_addr, port,
             gw.sessions.count())
    # SIGTERM (the supervisor's stop) ends the loop; the handler only enqueues.
    # Without a supervisor pid (run alone) only SIGTERM ends it; the wait
    # sleeps either way, it never spins.
    signals = SignalQueue()
    signals.install((signal.SIGTERM,))
    try:
        while not supervisor_pid or (os.getppid() == supervisor_pid
                                     and int(inst.header.sup_pid) == supervisor_pid):
            signals.wait(TICK_S)
            if signals.pop() == signal.SIGTERM:
                log.info("gateway stopping (SIGTERM): ending %d open stream(s) with a final status",
                         len(gw.attached))
                break
            gw.tick()
            health.update()
    finally:
        gw.stop_streams()  # each open stream pushes a final Status and ends (OK), within a poll
        health.shutdown()
        server.stop(grace=STOP_GRACE_S).wait()
        signals.uninstall()

