"""The blocking client: ``Client`` and its ``Session`` (see ``engine.client``).

A session's stream is fed from a queue (the request iterator gRPC reads on
its own thread) and read by a reader thread into another queue, so that the
caller waits for a reply at most ``timeout`` seconds (an unanswered gateway
counts as gone); one lock per session keeps sends in order, so a
``Session`` may be shared by threads.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc

from engine.client import common
from engine.client.session import SessionState, forgetting
from engine.errors import GatewayError
from engine.results import Ack, ForgetResult, RecallResult
from engine.rpc import engram_pb2 as pb


def _pump(call, inbox: queue.Queue) -> None:
    """Reader thread of one stream: every reply into ``inbox``, then None
    (the stream ended) or the error that ended it."""
    try:
        for msg in call:
            inbox.put(msg)
        inbox.put(None)
    except grpc.RpcError as exc:
        inbox.put(exc)


class Session(SessionState):
    """A numbered stream of batches of one space (``Client.stream``)."""

    def __init__(self, client: "Client", space: str, priority: str, client_buffer: int = 1):
        super().__init__(client, space, priority, client_buffer)
        self._out: queue.Queue | None = None
        self._inbox: queue.Queue | None = None
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------
    def _open(self, index: int) -> None:
        out: queue.Queue = queue.Queue()
        inbox: queue.Queue = queue.Queue()
        call = self.client._stubs[index].ObserveStream(iter(out.get, None), metadata=self.client._metadata)
        self._out, self._inbox, self._call = out, inbox, call
        threading.Thread(target=_pump, args=(call, inbox), name="engram-session-reader", daemon=True).start()
        out.put(self._init_message())
        self._take_ready(self._next(self.client.timeout, index), index)

    def _drop(self) -> None:
        if self._out is not None:
            self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        self._out = self._inbox = self._call = None

    def _next(self, timeout: float, index: int):
        """The stream's next message, waiting at most ``timeout`` seconds."""
        try:
            msg = self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise common.Unanswered(f"no answer from gateway {self.client.targets[index]} "
                                    f"within {timeout:g}s") from None
        if isinstance(msg, grpc.RpcError):
            raise msg
        if msg is None:
            raise common.StreamEnded("the gateway ended the stream")
        return msg

    def _reply(self, kind: str, wait: float):
        """The next reply of ``kind`` within ``wait`` seconds; status pushes on the way are taken in."""
        end = time.monotonic() + wait
        while True:
            got = self._take(self._next(end - time.monotonic(), self._at), kind)
            if got is not None:
                return got

    def _exchange(self, message: pb.ClientMessage, kind: str, deadline: float, on_reconnect=None,
                  st=None, wait: float | None = None):
        """Send ``message``, return the reply of ``kind``; on a transport failure
        reopen (resume) the session where ``_plan`` allows and send
        ``on_reconnect()`` instead."""
        def once(index: int, attempt: int):
            msg = message
            if self._call is None:
                self._open(index)
                if on_reconnect is not None and attempt:
                    msg = on_reconnect()
            self._out.put(msg)
            return self._reply(kind, self.client.timeout if wait is None else wait)
        pinned = self._pinned()
        try:
            return common.retry(once, self._plan(deadline), self._drop, stream=True)
        except GatewayError as exc:
            self._drop()
            raise self._lost(exc, pinned, st) from None

    # -- calls ---------------------------------------------------------------------
    def send(self, ids, vectors, first_sequence: int | None = None) -> Ack:
        """Queue one batch; numbered from ``next_sequence`` unless ``first_sequence`` is given."""
        with self._lock:
            return self._run(*self._sending(ids, vectors, first_sequence)).ack()

    def forget(self, ids, first_sequence: int | None = None) -> ForgetResult:
        """Forget ids of the session's space: a forget batch, numbered like a
        batch of observations (``len(ids)`` numbers) and resent the same way.
        Returns once the forgets are accepted (``applied`` is False: the
        session does not wait for them; they are applied in the order
        acknowledged, after this session's earlier observations)."""
        with self._lock:
            return self._run(*self._sending(ids, None, first_sequence, forget=True)).forgotten()

    def _run(self, st, wait: float):
        """Send ``st`` until it is acknowledged in full, or refused for good (caller holds the lock)."""
        time.sleep(wait)
        while True:
            ack = self._exchange(st.client_message(), "ack", st.deadline, lambda: self._resend(st), st)
            self.next_sequence = max(self.next_sequence, ack.next_sequence)
            wait = st.on_ack(ack)
            if wait is None:
                return st
            time.sleep(wait)

    def close(self, drain: bool = False, timeout: float = 30.0) -> pb.Closed | None:
        """End the session (and, with ``drain``, wait until its observations are inserted)."""
        with self._lock:
            if self._call is None and self.session_id == 0:
                return None
            try:
                closed = self._exchange(self._close_message(drain, timeout), "closed",
                                        time.monotonic() + self.client.retry_timeout,
                                        wait=self.client.timeout + (timeout if drain else 0.0))
            finally:
                self._drop()
            self.session_id = 0
            return closed

    def __enter__(self) -> "Session":
        with self._lock:
            common.retry(lambda index, attempt: self._open(index), self._plan(
                time.monotonic() + self.client.retry_timeout), self._drop, stream=True)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._drop()


class Client(common.ClientConfig):
    """Blocking client. ``target`` is HOST:PORT, or several gateways (comma-separated,
    or a list) to fail over between; ``token`` the bearer token when the gateway
    runs with --auth-token-file; ``tls_root_cert`` (PEM bytes or a path) switches
    to TLS."""

    def __init__(self, target: str | list[str], token: str | None = None, *, tls_root_cert=None,
                 retry_timeout: float = 30.0, timeout: float = 30.0,
                 max_message_bytes: int = common.DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(target, token, tls_root_cert, retry_timeout, timeout, max_message_bytes, grpc)
        self._lock = threading.Lock()

    def _unary(self, name: str, request, timeout: float | None = None, pinned: bool = False):
        def call(index: int, attempt: int):
            return getattr(self._stubs[index], name)(request, timeout=timeout or self.timeout,
                                                     metadata=self._metadata)
        return common.retry(call, self._attempts(self._targets.current if pinned else None))

    def info(self) -> dict:
        return common.info(self._unary("Info", pb.InfoRequest()))

    def recall(self, space: str, query, k: int = 10, *, ef: int | None = None,
               fresh: bool = False) -> RecallResult:
        """As ``engine.connect(...).recall``: ``ef``/``fresh`` keyword-only."""
        request = common.recall_request(space, query, k, ef, fresh)
        return common.recall_result(self._unary("Recall", request))

    def forget(self, space: str, ids, *, wait: bool = True, timeout: float | None = None) -> ForgetResult:
        """As ``engine.connect(...).forget``: remove ``ids`` from ``space``. With
        ``wait``, the call returns once they are applied (``applied``) or
        ``timeout`` (default: the client's) is nearly over. An ``over_capacity``
        remainder is sent again after the retry-after, until ``retry_timeout``.
        Ids that are not integers in [0, 2**64) raise ``InvalidInput`` before
        anything is sent; what the gateway refuses (a bad space name, too many
        ids) raises ``GatewayError`` (INVALID_ARGUMENT). After a lost
        connection the call is sent again to the same gateway (forgetting
        twice is harmless; ids the first, unanswered attempt removed then
        count as ``not_found``)."""
        st = forgetting(ids, 0, time.monotonic() + self.retry_timeout)
        applied = True
        while True:
            res = self._unary("Forget", common.forget_request(space, st.ids, wait), timeout, pinned=True)
            applied = applied and res.applied
            pause = st.on_ack(res)
            if pause is None:
                return st.forgotten(applied)
            time.sleep(pause)

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
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
