"""The asyncio client: ``AsyncClient`` and its ``AsyncSession``, the same
calls as ``engine.client.blocking`` as coroutines (see ``engine.client``)."""

from __future__ import annotations

import asyncio
import time

import grpc

from engine.client import common
from engine.client.session import SessionState, forgetting
from engine.errors import GatewayError
from engine.results import Ack, ForgetResult, RecallResult
from engine.rpc import engram_pb2 as pb


class AsyncSession(SessionState):
    """``Session`` with coroutines (``AsyncClient.stream``); use ``async with``."""

    def __init__(self, client: "AsyncClient", space: str, priority: str, client_buffer: int = 1):
        super().__init__(client, space, priority, client_buffer)
        self._lock = asyncio.Lock()

    async def _open(self, index: int) -> None:
        call = self.client._stubs[index].ObserveStream(metadata=self.client._metadata)
        self._call = call
        await call.write(self._init_message())
        self._take_ready(await self._next(self.client.timeout, index), index)

    def _drop(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None

    async def _next(self, timeout: float, index: int):
        """The stream's next message, waiting at most ``timeout`` seconds."""
        try:
            msg = await asyncio.wait_for(self._call.read(), max(0.0, timeout))
        except asyncio.TimeoutError:
            raise common.Unanswered(f"no answer from gateway {self.client.targets[index]} "
                                    f"within {timeout:g}s") from None
        if msg is grpc.aio.EOF:
            raise common.StreamEnded("the gateway ended the stream")
        return msg

    async def _reply(self, kind: str, wait: float):
        end = time.monotonic() + wait
        while True:
            got = self._take(await self._next(end - time.monotonic(), self._at), kind)
            if got is not None:
                return got

    async def _exchange(self, message, kind: str, deadline: float, on_reconnect=None, st=None,
                        wait: float | None = None):
        async def once(index: int, attempt: int):
            msg = message
            if self._call is None:
                await self._open(index)
                if on_reconnect is not None and attempt:
                    msg = on_reconnect()
            await self._call.write(msg)
            return await self._reply(kind, self.client.timeout if wait is None else wait)
        pinned = self._pinned()
        try:
            return await common.aretry(once, self._plan(deadline), self._drop, stream=True)
        except GatewayError as exc:
            self._drop()
            raise self._lost(exc, pinned, st) from None

    async def send(self, ids, vectors, first_sequence: int | None = None) -> Ack:
        async with self._lock:
            return (await self._run(*self._sending(ids, vectors, first_sequence))).ack()

    async def forget(self, ids, first_sequence: int | None = None) -> ForgetResult:
        """``Session.forget``: a numbered forget batch, not waited for."""
        async with self._lock:
            return (await self._run(*self._sending(ids, None, first_sequence, forget=True))).forgotten()

    async def _run(self, st, wait: float):
        await asyncio.sleep(wait)
        while True:
            ack = await self._exchange(st.client_message(), "ack", st.deadline, lambda: self._resend(st), st)
            self.next_sequence = max(self.next_sequence, ack.next_sequence)
            wait = st.on_ack(ack)
            if wait is None:
                return st
            await asyncio.sleep(wait)

    async def close(self, drain: bool = False, timeout: float = 30.0) -> pb.Closed | None:
        async with self._lock:
            if self._call is None and self.session_id == 0:
                return None
            try:
                closed = await self._exchange(self._close_message(drain, timeout), "closed",
                                              time.monotonic() + self.client.retry_timeout,
                                              wait=self.client.timeout + (timeout if drain else 0.0))
            finally:
                self._drop()
            self.session_id = 0
            return closed

    async def __aenter__(self) -> "AsyncSession":
        await common.aretry(lambda index, attempt: self._open(index),
                            self._plan(time.monotonic() + self.client.retry_timeout), self._drop, stream=True)
        return self

    async def __aexit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            await self.close()
        else:
            self._drop()


class AsyncClient(common.ClientConfig):
    """``Client`` for asyncio: the same methods, as coroutines."""

    def __init__(self, target: str | list[str], token: str | None = None, *, tls_root_cert=None,
                 retry_timeout: float = 30.0, timeout: float = 30.0,
                 max_message_bytes: int = common.DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(target, token, tls_root_cert, retry_timeout, timeout, max_message_bytes, grpc.aio)

    async def _unary(self, name: str, request, timeout: float | None = None, pinned: bool = False):
        async def call(index: int, attempt: int):
            return await getattr(self._stubs[index], name)(request, timeout=timeout or self.timeout,
                                                           metadata=self._metadata)
        return await common.aretry(call, self._attempts(self._targets.current if pinned else None))

    async def info(self) -> dict:
        return common.info(await self._unary("Info", pb.InfoRequest()))

    async def recall(self, space: str, query, k: int = 10, *, ef: int | None = None,
                     fresh: bool = False) -> RecallResult:
        request = common.recall_request(space, query, k, ef, fresh)
        return common.recall_result(await self._unary("Recall", request))

    async def forget(self, space: str, ids, *, wait: bool = True, timeout: float | None = None) -> ForgetResult:
        """``Client.forget`` as a coroutine."""
        st = forgetting(ids, 0, time.monotonic() + self.retry_timeout)
        applied = True
        while True:
            res = await self._unary("Forget", common.forget_request(space, st.ids, wait), timeout, pinned=True)
            applied = applied and res.applied
            pause = st.on_ack(res)
            if pause is None:
                return st.forgotten(applied)
            await asyncio.sleep(pause)

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
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
