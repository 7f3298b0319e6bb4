"""What the blocking and the asyncio client share: channels (one per
target), which failures are worth another try, the retry loops, and
conversions between engine values and messages. Which target to try and
how long to wait is ``engine.client.targets``."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from engine.client import targets
from engine.errors import GatewayError
from engine.results import RecallResult
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.rpc import wire

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20  # the gateway's --grpc-max-message-bytes default
backoff = targets.backoff  # (kept importable from here)


class Unanswered(grpc.RpcError):
    """A session's reply did not come within the client's ``timeout``: raised
    by the client itself, so it is told apart from a DEADLINE_EXCEEDED the
    gateway sends (an expired session)."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details


class StreamEnded(Unanswered):
    """The gateway ended a session's stream without answering (it is stopping)."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE


def transport_failure(exc: grpc.RpcError, several: bool, stream: bool = False) -> bool:
    """Whether ``exc`` says the gateway is gone rather than that the call was
    refused. UNAVAILABLE always; a reply the client gave up waiting for
    always; a unary call's DEADLINE_EXCEEDED (its ``timeout``) only when
    there is another target to try, so that a single-target client treats it
    as before. Every other status (INVALID_ARGUMENT, NOT_FOUND,
    UNAUTHENTICATED, RESOURCE_EXHAUSTED, ...) says something about the
    request that another gateway would answer the same way."""
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE or isinstance(exc, Unanswered):
        return True
    return code == grpc.StatusCode.DEADLINE_EXCEEDED and several and not stream


def error(exc: grpc.RpcError, transport: bool = False, address: str | None = None) -> GatewayError:
    details = exc.details() or ""
    if address is not None:
        details = f"{details} (gateway {address})"
    return GatewayError(exc.code(), details, transport)


def _give_up(exc, attempts: targets.Attempts, index: int, stream: bool) -> tuple[float | None, bool]:
    several = len(attempts.targets) > 1
    transport = transport_failure(exc, several, stream)
    return (attempts.failed(index) if transport else None), transport


def _raise(exc, attempts: targets.Attempts, index: int, transport: bool):
    several = len(attempts.targets) > 1
    raise error(exc, transport, attempts.targets.addresses[index] if several else None) from None


def retry(call, attempts: targets.Attempts, on_error=lambda: None, stream: bool = False, sleep=time.sleep):
    """``call(index, failures)`` on the target ``attempts`` names until it
    returns; a transport failure moves on as ``attempts`` says (another
    target, a backoff, or out of time); anything else is raised as a
    ``GatewayError`` at once. ``on_error`` runs after each failure."""
    while True:
        index = attempts.target()
        try:
            return call(index, attempts.failures)
        except grpc.RpcError as exc:
            on_error()
            wait, transport = _give_up(exc, attempts, index, stream)
            if wait is None:
                _raise(exc, attempts, index, transport)
            sleep(wait)


async def aretry(call, attempts: targets.Attempts, on_error=lambda: None, stream: bool = False):
    """``retry`` for coroutines."""
    while True:
        index = attempts.target()
        try:
            return await call(index, attempts.failures)
        except grpc.RpcError as exc:
            on_error()
            wait, transport = _give_up(exc, attempts, index, stream)
            if wait is None:
                _raise(exc, attempts, index, transport)
            await asyncio.sleep(wait)


# -- channels ----------------------------------------------------------------------------
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
    """Channel settings shared by Client and AsyncClient: one channel per
    target; ``channels`` is the ``grpc`` or the ``grpc.aio`` module."""

    def __init__(self, target, token: str | None, tls_root_cert, retry_timeout: float, timeout: float,
                 max_message_bytes: int, channels):
        self._targets = targets.Targets(target)
        creds = _credentials(tls_root_cert)
        opts = _options(max_message_bytes)
        self._channels = [channels.secure_channel(t, creds, opts) if creds else channels.insecure_channel(t, opts)
                          for t in self._targets.addresses]
        self._stubs = [pb_grpc.EngramStub(c) for c in self._channels]
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.retry_timeout = retry_timeout
        self.timeout = timeout
        self._sessions: dict = {}

    @property
    def target(self) -> str:
        """The gateway calls go to now (read-only: it moves on a transport failure)."""
        return self._targets.addresses[self._targets.current]

    @property
    def targets(self) -> tuple[str, ...]:
        return self._targets.addresses

    def _attempts(self, pinned: int | None = None, start: int | None = None) -> targets.Attempts:
        return self._targets.attempts(time.monotonic() + self.retry_timeout, pinned, start)


# -- conversions -------------------------------------------------------------------------
def forget_request(space, ids, wait: bool) -> pb.ForgetRequest:
    """``ids``: already checked and packed (``engine.client.session.packed_ids``)."""
    return pb.ForgetRequest(space=space, ids=wire.pack_ids(ids), no_wait=not wait)


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
        "cluster": cluster_info(res.cluster),
    }


def cluster_info(c: pb.ClusterInfo) -> dict | None:
    """Cluster membership as ``Info`` reports it; None on a single host."""
    if not c.name:
        return None
    return {
        "name": c.name, "host_id": c.host_id, "partitions": c.partitions,
        "hosts": {h.id: {"address": h.address, "live": h.live, "draining": h.draining,
                         "partitions": list(h.owned)} for h in c.hosts},
    }
