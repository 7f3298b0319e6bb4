"""What a session knows and what one ``send`` (or ``forget``) has achieved
so far, whatever the transport (``blocking.Session``, ``aio.AsyncSession``).

A session's forget batch (ids only) is numbered, acknowledged, retried and
resent after a reconnect exactly like a batch of observations: ``Sending``
carries either. The unary ``Client.forget`` uses the same bookkeeping for
its retries of an ``over_capacity`` remainder.

Where a session may go when its gateway fails (``SessionState._plan``):

* not opened yet: any target, round robin (nothing was sent);
* cluster mode (``Ready.cluster`` set): any gateway of the cluster. It is
  resumed there with its id and ``resume_next_sequence``, and the batch
  waiting for its ack is resent with its own numbers: the log's message id
  (session:first sequence) stores it once. Only within ``RESEND_WINDOW_S``
  of its first send, below the stream's 2-minute duplicate window;
* single host: only its own gateway (the engine restarts a gateway it lost,
  and the session table survives that). Another target is another engine,
  which cannot know whether the first one took the batch; when the gateway
  stays unreachable until ``retry_timeout``, a client with several targets
  raises ``SessionLost`` and the session starts afresh on its next send.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import numpy as np

from engine.client.common import backoff
from engine.errors import GatewayError, InvalidInput, SessionLost
from engine.results import Ack, ForgetResult
from engine.rpc import engram_pb2 as pb
from engine.rpc import wire

# The cluster's stream drops a message id from its duplicate window after
# 120 s (engine.cluster.bootstrap.DUPLICATE_WINDOW_S); a resend later than
# this after the batch's first send could be stored twice, so it is refused.
RESEND_WINDOW_S = 100.0


def packed_ids(ids) -> np.ndarray:
    """``ids`` as little-endian uint64; anything but integers in [0, 2**64) raises InvalidInput."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "i" and len(arr) and arr.min() < 0):
        raise InvalidInput("ids must be integers in [0, 2**64)")
    return np.ascontiguousarray(arr, dtype="<u8")


def forgetting(ids, first: int, deadline: float) -> "Sending":
    """The state of one forget (a session's forget batch, or a unary call: ``first`` unused)."""
    return Sending(packed_ids(ids), None, first, deadline, since=time.monotonic())


def sending(ids, vectors, first: int, deadline: float) -> "Sending":
    arr = packed_ids(ids)
    vec = np.ascontiguousarray(vectors, dtype="<f4")
    n = len(arr)
    # rows when the shape allows it (a remainder can then be sent again);
    # otherwise as they are, for the gateway to reject with the byte counts
    vec = vec.reshape(n, -1) if n and vec.size % n == 0 else vec.reshape(1, -1)
    return Sending(arr, vec, first, deadline, since=time.monotonic())


@dataclass
class Sending:
    """One ``send`` (or forget: ``vectors`` None): the part of the batch not
    yet acknowledged, and the verdicts so far."""

    ids: np.ndarray
    vectors: np.ndarray | None
    first: int
    deadline: float
    accepted: int = 0
    duplicate: int = 0
    final: dict | None = None
    backpressure: str = "normal"
    message: str = ""
    resent: bool = False      # sent again after a lost connection
    attempt: int = 0
    since: float = 0.0        # monotonic time of the first send of ``first``
    not_found: int = 0        # forgets: accepted ids the space did not hold

    @property
    def forget(self) -> bool:
        return self.vectors is None

    def client_message(self) -> pb.ClientMessage:
        """The batch (what is left of it) as a session's message."""
        if self.forget:
            return pb.ClientMessage(forget=pb.ForgetBatch(first_sequence=self.first, ids=wire.pack_ids(self.ids)))
        return pb.ClientMessage(batch=pb.Batch(first_sequence=self.first, ids=wire.pack_ids(self.ids),
                                               vectors=wire.pack_floats(self.vectors)))

    def on_ack(self, ack: pb.BatchAck) -> float | None:
        """Take an ack; returns seconds to wait before sending the rest, or None when done."""
        self.backpressure, self.message = wire.state_name(ack.backpressure), ack.message
        dup = ack.rejected.get("duplicate", 0)
        if self.resent:
            self.accepted += dup  # our own earlier attempt put them in
        else:
            self.duplicate += dup
        self.accepted += ack.accepted
        self.not_found += ack.not_found
        done = dup + ack.accepted
        over = ack.rejected.get("over_capacity", 0)
        final = {r: c for r, c in ack.rejected.items() if r not in ("duplicate", "over_capacity")}
        if final or not over or done >= len(self.ids) or time.monotonic() >= self.deadline:
            self.final = {**final, **({"over_capacity": over} if over else {})}
            return None
        self.ids, self.first = self.ids[done:], self.first + done
        if self.vectors is not None:
            self.vectors = self.vectors[done:]
        self.since = time.monotonic()
        self.attempt += 1
        wait = ack.retry_after_ms / 1000.0 or backoff(self.attempt)
        return min(wait, max(0.0, self.deadline - time.monotonic()))

    def ack(self) -> Ack:
        rejected = dict(self.final or {})
        if self.duplicate:
            rejected["duplicate"] = self.duplicate
        return Ack(self.accepted, rejected, self.backpressure, self.message)

    def forgotten(self, applied: bool = False) -> ForgetResult:
        """The outcome of a forget (``applied``: what the gateway said of every
        accepted part; a session's forget batch is never waited for)."""
        rejected = dict(self.final or {})
        if self.duplicate:
            rejected["duplicate"] = self.duplicate
        return ForgetResult(self.accepted, self.not_found, rejected, self.backpressure, applied, self.message)


class SessionState:
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
        self.cluster = ""          # Ready.cluster: "" on a single host
        self._at: int | None = None  # index of the target the session was last open on
        self._call = None

    @property
    def target(self) -> str | None:
        """The gateway the session is open on, or was last (None before it opened)."""
        return None if self._at is None else self.client.targets[self._at]

    def _init_message(self) -> pb.ClientMessage:
        resume = self.next_sequence if self.session_id else 0
        return pb.ClientMessage(init=pb.Init(space=self.space, priority=wire.PRIORITY_TO_PB[self.priority],
                                             client_buffer=self.client_buffer,
                                             resume_session_id=self.session_id, resume_next_sequence=resume))

    def _take_ready(self, msg, index: int) -> None:
        if msg is grpc.aio.EOF or msg.WhichOneof("kind") != "ready":
            raise GatewayError(grpc.StatusCode.INTERNAL, "the gateway did not answer init with ready")
        r = msg.ready
        self.session_id, self.next_sequence, self.limits = r.session_id, r.next_sequence, r.limits
        self.backpressure = wire.state_name(r.backpressure)
        self.cluster, self._at = r.cluster, index

    # -- where the session may go (see the module's docstring) -------------------------
    def _pinned(self) -> bool:
        return bool(self.session_id) and not self.cluster

    def _plan(self, deadline: float):
        if self._pinned():
            return self.client._targets.attempts(deadline, pinned=self._at)
        return self.client._targets.attempts(deadline, start=self._at if self._call is not None else None)

    def _resend(self, st: "Sending") -> pb.ClientMessage:
        """The batch of ``st`` again, on a reconnected stream."""
        if self.cluster and time.monotonic() - st.since > RESEND_WINDOW_S:
            raise self._reset(SessionLost(
                grpc.StatusCode.UNAVAILABLE,
                f"session {self.session_id}: the batch from sequence {st.first} was first sent "
                f"{time.monotonic() - st.since:.0f}s ago, longer than the cluster log remembers message ids "
                f"({RESEND_WINDOW_S:.0f}s kept here, below its 2-minute window); a resend could be stored "
                f"twice, so it is not resent: its fate is unknown",
                range(st.first, st.first + len(st.ids))))
        st.resent = True
        return st.client_message()

    def _lost(self, exc: GatewayError, pinned: bool, st: "Sending | None" = None) -> GatewayError:
        """What to raise when a call of the session failed with ``exc``."""
        if isinstance(exc, SessionLost) or not (pinned and exc.transport and len(self.client.targets) > 1):
            return exc
        pending = range(st.first, st.first + len(st.ids)) if st is not None else range(0)
        fate = (f"whether the batch from sequence {st.first} went in is unknown" if st is not None
                else "no batch was waiting for an ack")
        return self._reset(SessionLost(
            exc.code, f"session {self.session_id} lives on the single-host engine at {self.target}, which "
            f"did not answer within retry_timeout ({exc.details}); a session and a batch whose ack was "
            f"not seen are never moved to another engine; {fate}; the next send opens a new session",
            pending))

    def _reset(self, exc: SessionLost) -> SessionLost:
        """Forget the session (its next send opens a new one); returns ``exc``."""
        self.session_id, self.next_sequence, self.cluster = 0, 1, ""
        self.paused, self.retry_after = False, 0.0
        return exc

    def _take(self, msg, kind: str):
        """The payload if ``msg`` is of ``kind``; status pushes are taken in (None)."""
        got = msg.WhichOneof("kind")
        if got == "status":
            st = msg.status
            self.backpressure, self.paused = wire.state_name(st.backpressure), st.paused
            self.retry_after = st.retry_after_ms / 1000.0
        return getattr(msg, kind) if got == kind else None

    def _sending(self, ids, vectors, first_sequence: int | None, forget: bool = False) -> tuple[Sending, float]:
        """The send's (or forget's) state, and how long to wait first (a paused session)."""
        first = self.next_sequence if first_sequence is None else first_sequence
        deadline = time.monotonic() + self.client.retry_timeout
        st = forgetting(ids, first, deadline) if forget else sending(ids, vectors, first, deadline)
        wait = min(self.retry_after, self.client.retry_timeout) if self.paused else 0.0
        return st, wait

    def _close_message(self, drain: bool, timeout: float) -> pb.ClientMessage:
        return pb.ClientMessage(close=pb.Close(drain=drain, drain_timeout_s=timeout))
