"""Python clients of the gRPC gateway: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both offer the calls of the local API (``observe``, ``recall``) plus
sessions (``stream``) and ``info``::

    from engine.client import Client
    with Client("127.0.0.1:50051") as c:
        ack = c.observe("default", ids, vectors)          # -> Ack, as engine.connect
        with c.stream("default") as s:                    # numbered batches
            s.send(ids, vectors)
        res = c.recall("default", query, k=10)            # -> ids, distances, complete

Retries are the client's job, within ``retry_timeout`` seconds per call:

* ``over_capacity``: the rest of the batch is sent again after the ack's
  retry-after (or an exponential backoff when it has none), so a stream
  slows down to what the engine drains;
* a gateway that went away (``UNAVAILABLE``): reconnect with backoff, resume
  the session by id, and send the batch again with the same sequence
  numbers. The gateway answers ``duplicate`` for whatever had already gone
  in, so nothing is inserted twice; those count as accepted in the Ack.

An Ack's ``accepted`` covers the batch's leading observations; the rest are
in ``rejected`` by reason (``invalid_input``, ``invalid_sequence`` and a
first-try ``duplicate`` are final; ``over_capacity`` is what was still
refused when ``retry_timeout`` ran out).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np

from engine.rpc import wire
from engine.errors import GatewayError, InvalidInput
from engine.results import Ack, RecallResult
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


def _error(exc: grpc.RpcError) -> GatewayError:
    return GatewayError(exc.code(), exc.details() or "")


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


def _sending(ids, vectors, first: int, deadline: float) -> "_Sending":
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "i" and len(arr) and arr.min() < 0):
        raise InvalidInput("ids must be integers in [0, 2**64)")
    arr = np.ascontiguousarray(arr, dtype="<u8")
    vec = np.ascontiguousarray(vectors, dtype="<f4")
    n = len(arr)
    # rows when the shape allows it (a remainder can then be sent again);
    # otherwise as they are, for the gateway to reject with the byte counts
    vec = vec.reshape(n, -1) if n and vec.size % n == 0 else vec.reshape(1, -1)
    return _Sending(arr, vec, first, deadline)


def _recall_request(space, query, k, ef, fresh) -> pb.RecallRequest:
    q = np.asarray(query, dtype=np.float32)
    return pb.RecallRequest(space=space, queries=wire.pack_floats(q), k=k, ef=ef or 0, fresh=fresh)


def _recall_result(res: pb.RecallResponse) -> RecallResult:
    ids = np.frombuffer(res.ids, "<u8").astype(np.uint64).reshape(res.queries, res.k)
    dist = np.frombuffer(res.distances, "<f4").astype(np.float32).reshape(res.queries, res.k)
    return RecallResult(ids, dist, res.complete)


def _info(res: pb.InfoResponse) -> dict:
    lim = res.limits
    return {
        "limits": {f.name: getattr(lim, f.name) for f in lim.DESCRIPTOR.fields},
        "spaces": {s.name: s.vectors for s in res.spaces},
        "backpressure": wire.state_name(res.backpressure), "state": res.state, "workers": res.workers,
        "workers_up": res.workers_up, "active_sessions": res.active_sessions, "pressure": res.pressure,
    }


@dataclass
class _Sending:
    """One ``send``: the part of the batch not yet acknowledged, and the
    verdicts so far. Shared by the blocking and the asyncio session."""

    ids: np.ndarray
    vectors: np.ndarray
    first: int
    deadline: float
    accepted: int = 0
    duplicate: int = 0
    final: dict | None = None
    backpressure: str = "normal"
    message: str = ""
    resent: bool = False      # sent again after a lost connection
    attempt: int = 0

    def batch(self) -> pb.Batch:
        return pb.Batch(first_sequence=self.first, ids=wire.pack_ids(self.ids),
                        vectors=wire.pack_floats(self.vectors))

    def on_ack(self, ack: pb.BatchAck) -> float | None:
        """Take an ack; returns seconds to wait before sending the rest, or None when done."""
        self.backpressure, self.message = wire.state_name(ack.backpressure), ack.message
        dup = ack.rejected.get("duplicate", 0)
        if self.resent:
            self.accepted += dup  # our own earlier attempt put them in
        else:
            self.duplicate += dup
        self.accepted += ack.accepted
        done = dup + ack.accepted
        over = ack.rejected.get("over_capacity", 0)
        final = {r: c for r, c in ack.rejected.items() if r not in ("duplicate", "over_capacity")}
        if final or not over or done >= len(self.ids) or time.monotonic() >= self.deadline:
            self.final = {**final, **({"over_capacity": over} if over else {})}
            return None
        self.ids, self.vectors, self.first = self.ids[done:], self.vectors[done:], self.first + done
        self.attempt += 1
        wait = ack.retry_after_ms / 1000.0 or min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** self.attempt)
        return min(wait, max(0.0, self.deadline - time.monotonic()))

    def ack(self) -> Ack:
        rejected = dict(self.final or {})
        if self.duplicate:
            rejected["duplicate"] = self.duplicate
        return Ack(self.accepted, rejected, self.backpressure, self.message)


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** attempt)


def _retry(call, deadline: float, on_error=lambda: None):
    """``call(attempt)`` until it returns, retrying UNAVAILABLE with backoff
    until ``deadline``; ``on_error`` runs after each failure."""
    attempt = 0
    while True:
        try:
            return call(attempt)
        except grpc.RpcError as exc:
            on_error()
            if exc.code() not in RETRYABLE or time.monotonic() >= deadline:
                raise _error(exc) from None
            time.sleep(_backoff(attempt))
            attempt += 1


async def _aretry(call, deadline: float, on_error=lambda: None):
    """``_retry`` for coroutines."""
    attempt = 0
    while True:
        try:
            return await call(attempt)
        except grpc.RpcError as exc:
            on_error()
            if exc.code() not in RETRYABLE or time.monotonic() >= deadline:
                raise _error(exc) from None
            await asyncio.sleep(_backoff(attempt))
            attempt += 1


class _SessionState:
    """What a session knows, whichever transport carries it."""

    def __init__(self, client, space: str, priority: str, client_buffer: int = 1):
        self.client = client
        self.space = space
        self.priority = priority
        self.client_buffer = client_buffer
        self.session_id = 0
        self.next_sequence = 1
        self.limits: pb.Limits | None = None
        self.backpressure = "normal"
        self.paused = False
        self.retry_after = 0.0
        self._call = None

    def _init_message(self) -> pb.ClientMessage:
        return pb.ClientMessage(init=pb.Init(space=self.space, priority=wire.PRIORITY_TO_PB[self.priority],
                                             client_buffer=self.client_buffer,
                                             resume_session_id=self.session_id))

    def _take_ready(self, msg) -> None:
        if msg is grpc.aio.EOF or msg.WhichOneof("kind") != "ready":
            raise GatewayError(grpc.StatusCode.INTERNAL, "the gateway did not answer init with ready")
        r = msg.ready
        self.session_id, self.next_sequence, self.limits = r.session_id, r.next_sequence, r.limits
        self.backpressure = wire.state_name(r.backpressure)

    def _take(self, msg, kind: str):
        """The payload if ``msg`` is of ``kind``; status pushes are taken in (None)."""
        got = msg.WhichOneof("kind")
        if got == "status":
            st = msg.status
            self.backpressure, self.paused = wire.state_name(st.backpressure), st.paused
            self.retry_after = st.retry_after_ms / 1000.0
        return getattr(msg, kind) if got == kind else None

    def _sending(self, ids, vectors, first_sequence: int | None) -> tuple["_Sending", float]:
        """The send's state, and how long to wait first (a paused session)."""
        first = self.next_sequence if first_sequence is None else first_sequence
        st = _sending(ids, vectors, first, time.monotonic() + self.client.retry_timeout)
        wait = min(self.retry_after, self.client.retry_timeout) if self.paused else 0.0
        return st, wait

    def _close_message(self, drain: bool, timeout: float) -> pb.ClientMessage:
        return pb.ClientMessage(close=pb.Close(drain=drain, drain_timeout_s=timeout))


class _ClientConfig:
    """Channel settings shared by Client and AsyncClient."""

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


# -- blocking ------------------------------------------------------------------------
class Session(_SessionState):
    """A numbered stream of batches of one space (``Client.stream``)."""

    def __init__(self, client: "Client", space: str, priority: str, client_buffer: int = 1):
        super().__init__(client, space, priority, client_buffer)
        self._out: queue.Queue | None = None
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------
    def _open(self) -> None:
        out: queue.Queue = queue.Queue()
        call = self.client._stub.ObserveStream(iter(out.get, None), metadata=self.client._metadata)
        out.put(self._init_message())
        self._take_ready(next(call))
        self._out, self._call = out, call

    def _drop(self) -> None:
        if self._out is not None:
            self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        self._out = self._call = None

    def _reply(self, kind: str):
        """The next reply of ``kind``; status pushes on the way are taken in."""
        for msg in self._call:
            got = self._take(msg, kind)
            if got is not None:
                return got
        raise GatewayError(grpc.StatusCode.UNAVAILABLE, "the gateway ended the stream")

    def _exchange(self, message: pb.ClientMessage, kind: str, deadline: float, on_reconnect=None):
        """Send ``message``, return the reply of ``kind``; reconnect (resuming
        the session) on UNAVAILABLE and send ``on_reconnect()`` instead."""
        def once(attempt: int):
            msg = message
            if self._call is None:
                self._open()
                if on_reconnect is not None and attempt:
                    msg = on_reconnect()
            self._out.put(msg)
            return self._reply(kind)
        return _retry(once, deadline, self._drop)

    # -- calls ---------------------------------------------------------------------
    def send(self, ids, vectors, first_sequence: int | None = None) -> Ack:
        """Queue one batch; numbered from ``next_sequence`` unless ``first_sequence`` is given."""
        with self._lock:
            st, wait = self._sending(ids, vectors, first_sequence)
            time.sleep(wait)

            def resend():
                st.resent = True
                return pb.ClientMessage(batch=st.batch())

            while True:
                ack = self._exchange(pb.ClientMessage(batch=st.batch()), "ack", st.deadline, resend)
                self.next_sequence = max(self.next_sequence, ack.next_sequence)
                wait = st.on_ack(ack)
                if wait is None:
                    return st.ack()
                time.sleep(wait)

    def close(self, drain: bool = False, timeout: float = 30.0) -> pb.Closed | None:
        """End the session (and, with ``drain``, wait until its observations are inserted)."""
        with self._lock:
            if self._call is None and self.session_id == 0:
                return None
            try:
                closed = self._exchange(self._close_message(drain, timeout), "closed",
                                        time.monotonic() + self.client.retry_timeout)
            finally:
                self._drop()
            self.session_id = 0
            return closed

    def __enter__(self) -> "Session":
        with self._lock:
            self._exchange_open()
        return self

    def _exchange_open(self) -> None:
        _retry(lambda attempt: self._open(), time.monotonic() + self.client.retry_timeout, self._drop)

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._drop()


class Client(_ClientConfig):
    """Blocking client. ``target`` is HOST:PORT; ``token`` the bearer token when
    the gateway runs with --auth-token-file; ``tls_root_cert`` (PEM bytes or a
    path) switches to TLS."""

    def __init__(self, target: str, token: str | None = None, *, tls_root_cert=None,
                 retry_timeout: float = 30.0, timeout: float = 30.0, max_message_bytes: int = 64 << 20):
        super().__init__(target, token, tls_root_cert, retry_timeout, timeout, max_message_bytes, grpc)
        self._lock = threading.Lock()

    def _unary(self, method, request):
        return _retry(lambda attempt: method(request, timeout=self.timeout, metadata=self._metadata),
                      time.monotonic() + self.retry_timeout)

    def info(self) -> dict:
        return _info(self._unary(self._stub.Info, pb.InfoRequest()))

    def recall(self, space: str, query, k: int = 10, fresh: bool = False, ef: int | None = None) -> RecallResult:
        return _recall_result(self._unary(self._stub.Recall, _recall_request(space, query, k, ef, fresh)))

    def stream(self, space: str, priority: str = "normal", client_buffer: int = 1) -> Session:
        return Session(self, space, priority, client_buffer)

    def observe(self, space: str, ids, vectors, priority: str = "normal") -> Ack:
        """Queue observations; a session per (space, priority) is kept open underneath."""
        with self._lock:
            s = self._sessions.get((space, priority))
            if s is None:
                s = self._sessions[(space, priority)] = Session(self, space, priority)
        return s.send(ids, vectors)

    def close(self) -> None:
        for s in list(self._sessions.values()):
            try:
                s.close()
            except GatewayError:
                s._drop()
        self._sessions.clear()
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- asyncio -------------------------------------------------------------------------
class AsyncSession(_SessionState):
    """``Session`` with coroutines (``AsyncClient.stream``); use ``async with``."""

    def __init__(self, client: "AsyncClient", space: str, priority: str, client_buffer: int = 1):
        super().__init__(client, space, priority, client_buffer)
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        call = self.client._stub.ObserveStream(metadata=self.client._metadata)
        await call.write(self._init_message())
        self._take_ready(await call.read())
        self._call = call

    def _drop(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None

    async def _reply(self, kind: str):
        while True:
            msg = await self._call.read()
            if msg is grpc.aio.EOF:
                raise GatewayError(grpc.StatusCode.UNAVAILABLE, "the gateway ended the stream")
            got = self._take(msg, kind)
            if got is not None:
                return got

    async def _exchange(self, message, kind: str, deadline: float, on_reconnect=None):
        async def once(attempt: int):
            msg = message
            if self._call is None:
                await self._open()
                if on_reconnect is not None and attempt:
                    msg = on_reconnect()
            await self._call.write(msg)
            return await self._reply(kind)
        return await _aretry(once, deadline, self._drop)

    async def send(self, ids, vectors, first_sequence: int | None = None) -> Ack:
        async with self._lock:
            st, wait = self._sending(ids, vectors, first_sequence)
            await asyncio.sleep(wait)

            def resend():
                st.resent = True
                return pb.ClientMessage(batch=st.batch())

            while True:
                ack = await self._exchange(pb.ClientMessage(batch=st.batch()), "ack", st.deadline, resend)
                self.next_sequence = max(self.next_sequence, ack.next_sequence)
                wait = st.on_ack(ack)
                if wait is None:
                    return st.ack()
                await asyncio.sleep(wait)

    async def close(self, drain: bool = False, timeout: float = 30.0) -> pb.Closed | None:
        async with self._lock:
            if self._call is None and self.session_id == 0:
                return None
            try:
                closed = await self._exchange(self._close_message(drain, timeout), "closed",
                                              time.monotonic() + self.client.retry_timeout)
            finally:
                self._drop()
            self.session_id = 0
            return closed

    async def __aenter__(self) -> "AsyncSession":
        await _aretry(lambda attempt: self._open(), time.monotonic() + self.client.retry_timeout, self._drop)
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            await self.close()
        else:
            self._drop()


class AsyncClient(_ClientConfig):
    """``Client`` for asyncio: the same methods, as coroutines."""

    def __init__(self, target: str, token: str | None = None, *, tls_root_cert=None,
                 retry_timeout: float = 30.0, timeout: float = 30.0, max_message_bytes: int = 64 << 20):
        super().__init__(target, token, tls_root_cert, retry_timeout, timeout, max_message_bytes, grpc.aio)

    async def _unary(self, method, request):
        return await _aretry(lambda attempt: method(request, timeout=self.timeout, metadata=self._metadata),
                             time.monotonic() + self.retry_timeout)

    async def info(self) -> dict:
        return _info(await self._unary(self._stub.Info, pb.InfoRequest()))

    async def recall(self, space: str, query, k: int = 10, fresh: bool = False,
                     ef: int | None = None) -> RecallResult:
        return _recall_result(await self._unary(self._stub.Recall, _recall_request(space, query, k, ef, fresh)))

    def stream(self, space: str, priority: str = "normal", client_buffer: int = 1) -> AsyncSession:
        return AsyncSession(self, space, priority, client_buffer)

    async def observe(self, space: str, ids, vectors, priority: str = "normal") -> Ack:
        s = self._sessions.get((space, priority))
        if s is None:
            s = self._sessions[(space, priority)] = AsyncSession(self, space, priority)
        return await s.send(ids, vectors)

    async def close(self) -> None:
        for s in list(self._sessions.values()):
            try:
                await s.close()
            except GatewayError:
                s._drop()
        self._sessions.clear()
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
