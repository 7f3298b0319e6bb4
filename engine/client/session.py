"""What a session knows and what one ``send`` has achieved so far, whatever
the transport (``blocking.Session``, ``aio.AsyncSession``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import numpy as np

from engine.client.common import backoff
from engine.errors import GatewayError, InvalidInput
from engine.results import Ack
from engine.rpc import engram_pb2 as pb
from engine.rpc import wire


def sending(ids, vectors, first: int, deadline: float) -> "Sending":
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
    return Sending(arr, vec, first, deadline)


@dataclass
class Sending:
    """One ``send``: the part of the batch not yet acknowledged, and the
    verdicts so far."""

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
        wait = ack.retry_after_ms / 1000.0 or backoff(self.attempt)
        return min(wait, max(0.0, self.deadline - time.monotonic()))

    def ack(self) -> Ack:
        rejected = dict(self.final or {})
        if self.duplicate:
            rejected["duplicate"] = self.duplicate
        return Ack(self.accepted, rejected, self.backpressure, self.message)


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

    def _sending(self, ids, vectors, first_sequence: int | None) -> tuple[Sending, float]:
        """The send's state, and how long to wait first (a paused session)."""
        first = self.next_sequence if first_sequence is None else first_sequence
        st = sending(ids, vectors, first, time.monotonic() + self.client.retry_timeout)
        wait = min(self.retry_after, self.client.retry_timeout) if self.paused else 0.0
        return st, wait

    def _close_message(self, drain: bool, timeout: float) -> pb.ClientMessage:
        return pb.ClientMessage(close=pb.Close(drain=drain, drain_timeout_s=timeout))
