"""What the blocking and the asyncio client share: channel settings, the
retry loops, and conversions between engine values and messages."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from engine.errors import GatewayError
from engine.results import RecallResult
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.rpc import wire

# Only a gateway that went away is worth another try: every other status
# says something about the request that a resend would not change.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # the gateway's --grpc-max-message-bytes default


def error(exc: grpc.RpcError) -> GatewayError:
    return GatewayError(exc.code(), exc.details() or "")


def backoff(attempt: int) -> float:
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** attempt)


def retry(call, deadline: float, on_error=lambda: None):
    """``call(attempt)`` until it returns, retrying UNAVAILABLE with backoff
    until ``deadline``; ``on_error`` runs after each failure."""
    attempt = 0
    while True:
        try:
            return call(attempt)
        except grpc.RpcError as exc:
            on_error()
            if exc.code() not in RETRYABLE or time.monotonic() >= deadline:
                raise error(exc) from None
            time.sleep(backoff(attempt))
            attempt += 1


async def aretry(call, deadline: float, on_error=lambda: None):
    """``retry`` for coroutines."""
    attempt = 0
    while True:
        try:
            return await call(attempt)
        except grpc.RpcError as exc:
            on_error()
            if exc.code() not in RETRYABLE or time.monotonic() >= deadline:
                raise error(exc) from None
            await asyncio.sleep(backoff(attempt))
            attempt += 1


# -- channel ---------------------------------------------------------------------------
def _credentials(tls_root_cert):
    if tls_root_cert is None:
        return None
    if isinstance(tls_root_cert, str):
        with open(tls_root_cert, "rb") as fh:
            tls_root_cert = fh.read()
    return grpc.ssl_channel_credentials(root_certificates=tls_root_cert)


def _options(max_message_bytes: int) -> list:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


class ClientConfig:
    """Channel settings shared by Client and AsyncClient; ``channels`` is
    the ``grpc`` or the ``grpc.aio`` module."""

    def __init__(self, target: str, token: str | None, tls_root_cert, retry_timeout: float, timeout: float,
                 max_message_bytes: int, channels):
        creds = _credentials(tls_root_cert)
        opts = _options(max_message_bytes)
        self._channel = (channels.secure_channel(target, creds, opts) if creds else
                         channels.insecure_channel(target, opts))
        self._stub = pb_grpc.EngramStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.retry_timeout = retry_timeout
        self.timeout = timeout
        self._sessions: dict = {}


# -- conversions -------------------------------------------------------------------------
def recall_request(space, query, k, ef, fresh) -> pb.RecallRequest:
    q = np.asarray(query, dtype=np.float32)
    return pb.RecallRequest(space=space, queries=wire.pack_floats(q), k=k, ef=ef or 0, fresh=fresh)


def recall_result(res: pb.RecallResponse) -> RecallResult:
    ids = np.frombuffer(res.ids, "<u8").astype(np.uint64).reshape(res.queries, res.k)
    dist = np.frombuffer(res.distances, "<f4").astype(np.float32).reshape(res.queries, res.k)
    return RecallResult(ids, dist, res.complete, tuple(int(s) for s in res.skipped_slots))


def info(res: pb.InfoResponse) -> dict:
    lim = res.limits
    return {
        "limits": {f.name: getattr(lim, f.name) for f in lim.DESCRIPTOR.fields},
        "spaces": {s.name: s.vectors for s in res.spaces},
        "backpressure": wire.state_name(res.backpressure), "state": res.state, "workers": res.workers,
        "workers_up": res.workers_up, "active_sessions": res.active_sessions, "pressure": res.pressure,
    }
