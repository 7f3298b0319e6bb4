"""The asyncio client: ``AsyncClient`` and its ``AsyncSession``, the same
calls as ``engine.client.blocking`` as coroutines (see ``engine.client``)."""

from __future__ import annotations

import asyncio
import time

import grpc

from engine.client import common
from engine.client.session import SessionState
from engine.errors import GatewayError
from engine.results import Ack, RecallResult
from engine.rpc import engram_pb2 as pb


class AsyncSession(SessionState):
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
        return await common.aretry(once, deadline, self._drop)

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
        await common.aretry(lambda attempt: self._open(), time.monotonic() + self.client.retry_timeout,
                            self._drop)
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            await self.close()
        else:
            self._drop()


class AsyncClient(common.ClientConfig):
    """``Client`` for asyncio: the same methods, as coroutines."""

    def __init__(self, target: str, token: str | None = None, *, tls_root_cert=None,
                 retry_timeout: float = 30.0, timeout: float = 30.0,
                 max_message_bytes: int = common.DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(target, token, tls_root_cert, retry_timeout, timeout, max_message_bytes, grpc.aio)

    async def _unary(self, method, request):
        return await common.aretry(lambda attempt: method(request, timeout=self.timeout, metadata=self._metadata),
                                   time.monotonic() + self.retry_timeout)

    async def info(self) -> dict:
        return common.info(await self._unary(self._stub.Info, pb.InfoRequest()))

    async def recall(self, space: str, query, k: int = 10, *, ef: int | None = None,
                     fresh: bool = False) -> RecallResult:
        request = common.recall_request(space, query, k, ef, fresh)
        return common.recall_result(await self._unary(self._stub.Recall, request))

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
