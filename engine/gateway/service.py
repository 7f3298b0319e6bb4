"""The gRPC service of the gateway: sessions, acks, status pushes, recall, info.

It is a producer like any local one (``engine.producer.api.Engine``, with the
gateway's own metric row) plus sessions (``engine.control.sessions``): each
``ObserveStream`` is one session of one space and priority whose batches
carry sequence numbers. Per batch, in order:

1. bytes → arrays; a bad length is ``invalid_input`` (no number consumed);
2. sequence check against the session's next number: a gap is
   ``invalid_sequence``; an already-accepted prefix is ``duplicate``
   (acknowledged, not queued again);
3. the rest goes through validate → admit → register the space (the first
   accepted batch creates it; ``Init`` only checks the name,
   ``engine.gateway.opening``) → one ring, whose publish journal advances
   the session's next number atomically with the records.

A stream that ends without Close leaves its session for a resume; when the
table is full, a new session evicts the longest-idle one no stream serves
(``engine.gateway.eviction``).

A session may also carry forget batches (ids only), numbered in the same
sequence and checked the same way (``engine.gateway.forgetting``, which
also serves the unary ``Forget``).

Protocol errors (no init first, a second init, an unknown message, bytes of
a recall that do not divide) end the call with a gRPC status and a clear
text; bad data inside a well-formed batch is answered in its ack and the
stream goes on. Every ack carries the backpressure state and, at critical
and above (or when a full lane refused part of a batch), a retry-after from
the measured drain rate; a ``Status`` is
pushed when the state, or whether the session's priority is admitted,
changes.

Threads: the gRPC server's pool runs one handler per call; an
``ObserveStream`` handler also has a reader thread so that it can push a
status while the client is silent. The process's main thread
(``engine.gateway.server``) calls ``tick``: drain rate, idle sessions.
Nothing here is called from a signal handler.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from engine.control import admission
from engine.control import pressure
from engine.rpc import wire
from engine.gateway.drain import DrainMeter, retry_after_s
from engine.gateway.eviction import Evictions
from engine.gateway.forgetting import ForgetCalls
from engine.gateway.opening import open_session
from engine.gateway.reader import END, POLL_S, Reader
from engine.errors import InvalidInput, NotRunning
from engine.control.instance import Instance
from engine.producer.api import Engine
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.control.sessions import S_ACCEPTED, SessionTable

log = logging.getLogger("engram.gateway")

INIT_TIMEOUT_S = 30.0      # a stream must send init within this
DRAIN_TIMEOUT_S = 30.0     # Close(drain) default wait

class Gateway(ForgetCalls, pb_grpc.EngramServicer):
    def __init__(self, inst: Instance, writer):
        self.inst = inst
        self.p = inst.params
        self.engine = Engine(inst, writer=writer)
        self.sessions = SessionTable(inst.session_rows)
        self.stopping = threading.Event()  # set at the process's stop: streams end with a final status
        self.table_lock = threading.Lock()
        self.row_locks = [threading.Lock() for _ in range(self.sessions.capacity)]
        self.attached: dict[int, object] = {}  # session row -> token of the stream serving it
        self.evictions = Evictions(self.sessions, self.p.session_idle_timeout)
        self.meter = DrainMeter(inst.rings)
        self.capacity = sum(inst.capacity_by_lane())
        # Cluster mode's name (engine.cluster.front sets it): sessions then
        # resume through any gateway of the cluster (engine.gateway.opening).
        self.cluster = ""

    # -- bookkeeping ----------------------------------------------------------
    def event(self, event: str) -> None:
        self.engine.record(lambda w: w.inc("sessions_total", event=event))

    def tick(self) -> None:
        """Main thread: drain rate; expire idle sessions no stream serves."""
        self.meter.sample()
        with self.table_lock:
            for row in self.sessions.idle(self.p.session_idle_timeout, keep=set(self.attached)):
                log.info("session %d expired after %.0fs idle", self.sessions.session_id(row),
                         self.p.session_idle_timeout)
                self.sessions.close(row)
                self.event("expired")

    def _state(self, priority: str) -> tuple[int, bool]:
        """(backpressure state, whether ``priority`` is refused now)."""
        state = int(self.inst.header.bp_state)
        refused = bool(self.inst.header.admission_closed) or not admission.admits(priority, state) \
            or bool(pressure.unwritable(self.inst))
        return state, refused

    def _retry_ms(self, state: int, priority: str, lane_rejected: int = 0) -> int:
        queued = sum(self.inst.queued_by_lane())
        return int(1000 * retry_after_s(state, priority, queued, self.capacity, self.meter.rate, lane_rejected))

    # -- ObserveStream ----------------------------------------------------------
    def ObserveStream(self, request_iterator, context):
        reader = Reader(request_iterator)
        try:
            first = reader.get(INIT_TIMEOUT_S)
            if first is None or first is END or first.WhichOneof("kind") != "init":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "the first message of ObserveStream must be init (space, priority)")
            token = object()
            row, space, priority, resumed = open_session(self, first.init, context, token)
        except BaseException:
            reader.stop()
            raise
        try:
            state, refused = self._state(priority)
            yield pb.ServerMessage(ready=pb.Ready(
                session_id=self.sessions.session_id(row), next_sequence=self.sessions.next_seq(row),
                limits=wire.limits(self.p), backpressure=state, resumed=resumed, cluster=self.cluster))
            last_status = (state, refused)
            last_msg = time.monotonic()
            while True:
                if self.stopping.is_set():
                    yield pb.ServerMessage(status=self._final_status(row, priority))
                    return
                msg = reader.get(POLL_S)
                if self.attached.get(row) is not token:
                    context.abort(grpc.StatusCode.ABORTED, "this session was resumed on another stream")
                if msg is END:
                    return  # the session stays open for a resume until it expires
                if msg is None:
                    if time.monotonic() - last_msg > self.p.session_idle_timeout:
                        self._close(row, "expired")
                        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"session idle for more than {self.p.session_idle_timeout:.0f}s; "
                                      f"it has expired, open a new one")
                else:
                    last_msg = time.monotonic()
                    kind = msg.WhichOneof("kind")
                    if kind == "batch":
                        yield pb.ServerMessage(ack=self._batch(row, space, priority, msg.batch, context))
                    elif kind == "forget":
                        yield pb.ServerMessage(ack=self._forget_batch(row, space, msg.forget, context))
                    elif kind == "close":
                        yield pb.ServerMessage(closed=self._closing(row, msg.close))
                        return
                    else:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      "init may be sent once, first; then batch, forget or close"
                                      if kind == "init" else "empty ClientMessage: set batch, forget or close")
                now = self._state(priority)
                if now != last_status:
                    last_status = now
                    yield pb.ServerMessage(status=self._status(priority, *now))
        finally:
            reader.stop()
            with self.table_lock:
                if self.attached.get(row) is token:
                    del self.attached[row]

    def _close(self, row: int, event: str) -> None:
        with self.table_lock:
            self.sessions.close(row)
        self.event(event)

    def stop_streams(self) -> None:
        """Make every open ObserveStream push a final Status and end (the process is stopping)."""
        self.stopping.set()

    def _final_status(self, row: int, priority: str) -> pb.Status:
        state = int(self.inst.header.bp_state)
        kept = (f"every batch acknowledged so far is kept (session {self.sessions.session_id(row)}, next "
                f"sequence {self.sessions.next_seq(row)})")
        if self.inst.header.stop:  # the whole engine stops: the session table goes with its shared memory
            text = f"the engine is stopping: this stream ends now; {kept}; open a new session when it is back"
        else:
            text = f"the gateway is restarting: this stream ends now; {kept}; reconnect and resume the session"
        return pb.Status(backpressure=state, paused=True, retry_after_ms=self._retry_ms(state, priority),
                         message=text)

    def _status(self, priority: str, state: int, refused: bool) -> pb.Status:
        blocked = pressure.unwritable(self.inst)
        if bool(self.inst.header.admission_closed):
            text = "the engine is shutting down and admits nothing"
        elif blocked:
            text = blocked
        elif refused:
            text = f"{priority} priority is refused while backpressure is {admission.STATES[state]}; wait"
        else:
            text = f"backpressure {admission.STATES[state]}; {priority} priority is admitted"
        return pb.Status(backpressure=state, paused=refused, retry_after_ms=self._retry_ms(state, priority),
                         message=text)

    def _batch(self, row: int, space: str, priority: str, batch, context) -> pb.BatchAck:
        ack = pb.BatchAck(first_sequence=batch.first_sequence)
        idx = self.engine.spaces.lookup(space)
        try:
            ids = wire.unpack_ids(batch.ids)
            vectors = wire.unpack_rows(batch.vectors, self.p.dim, len(ids), "vectors")
        except InvalidInput as exc:
            n = max(1, len(batch.ids) // 8)
            return self._rejected_ack(ack, row, priority, idx, "invalid_input", n, str(exc))
        return self._numbered(row, priority, idx, ack, len(ids), "observation(s)", lambda dup, nxt: self._queue(
            row, space, priority, ids[dup:], vectors[dup:], nxt, ack, idx, context))

    def _numbered(self, row: int, priority: str, idx, ack, n: int, what: str, queue) -> pb.BatchAck:
        """The sequence check of a decoded batch of ``n`` (observations or
        forgets): a gap is refused, an already-accepted prefix acknowledged as
        duplicate, and ``queue(dup, next_sequence)`` queues the rest."""
        first = ack.first_sequence
        ack.count = n
        with self.row_locks[row]:
            self.sessions.touch(row)
            nxt = self.sessions.next_seq(row)
            if first == 0 or first > nxt:
                text = ("sequence numbers start at 1" if first == 0 else
                        f"gap: this session expects first_sequence {nxt}, got {first}")
                return self._rejected_ack(ack, row, priority, idx, "invalid_sequence", max(1, n), text)
            dup = min(n, nxt - first)
            if dup:
                ack.rejected["duplicate"] = dup
                self.engine.count_rejected(idx, "duplicate", dup)
                ack.message = f"{dup} {what} from {first} were already accepted; not queued again"
            if dup < n:
                queue(dup, nxt)
            ack.next_sequence = self.sessions.next_seq(row)
        return self._finish(ack, priority)

    def _queue(self, row: int, space: str, priority: str, ids, vectors, nxt: int, ack, idx, context) -> None:
        """Queue the batch's new observations (caller holds the session's row
        lock); the session's number advances atomically with the records."""
        self._into_ack(ack, len(ids), context, lambda: self.engine.observe_into(
            space, ids, vectors, priority, journal=(row, nxt), on_publish=lambda k: self.sessions.advance(row, nxt, k)))

    @staticmethod
    def _into_ack(ack, n: int, context, queue):
        """Run ``queue()`` (an engine call that queues a session batch) and put
        its outcome into ``ack``; returns the engine's result (None if refused
        as bad input, which the engine counted)."""
        try:
            got = queue()
        except InvalidInput as exc:
            ack.rejected["invalid_input"] = n
            ack.message = str(exc)
            return None
        except NotRunning as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        ack.accepted = got.accepted
        for reason, k in got.rejected.items():
            ack.rejected[reason] = k
        if got.message:
            ack.message = got.message
        return got

    def _finish(self, ack, priority: str) -> pb.BatchAck:
        state, _ = self._state(priority)
        ack.backpressure = state
        ack.retry_after_ms = self._retry_ms(state, priority, ack.rejected.get("over_capacity", 0))
        return ack

    def _rejected_ack(self, ack, row: int, priority: str, idx, reason: str, n: int, text: str) -> pb.BatchAck:
        self.engine.count_rejected(idx, reason, n)
        ack.rejected[reason] = n
        ack.message = text
        ack.next_sequence = self.sessions.next_seq(row)
        ack.backpressure, _ = self._state(priority)
        return ack

    def _closing(self, row: int, close) -> pb.Closed:
        drained = False
        if close.drain:
            # Everything queued now, this session's batches included, is committed.
            marks = [(r, r.head) for r in self.inst.rings]
            deadline = time.monotonic() + (close.drain_timeout_s or DRAIN_TIMEOUT_S)
            while time.monotonic() < deadline:
                if all(r.tail >= h for r, h in marks):
                    drained = True
                    break
                time.sleep(0.005)
        out = pb.Closed(next_sequence=self.sessions.next_seq(row),
                        accepted_total=int(self.sessions.rows[row, S_ACCEPTED]), drained=drained)
        self._close(row, "closed")
        return out

    # -- recall and info ----------------------------------------------------------
    def _recall(self, req, context) -> pb.RecallResponse:
        try:
            queries = wire.unpack_rows(req.queries, self.p.dim, None, "queries")
            # k = 0 is what proto3 sends for an unset k: refused like any k
            # outside [1, --max-k], never taken for a default the caller did not ask
            res = self.engine.recall(req.space, queries, k=req.k, ef=req.ef or None, fresh=req.fresh)
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotRunning as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        q, k = res.ids.shape
        return pb.RecallResponse(queries=q, k=k, ids=wire.pack_ids(res.ids),
                                 distances=wire.pack_floats(res.distances), complete=res.complete,
                                 skipped_slots=res.skipped)

    def Recall(self, request, context):
        return self._recall(request, context)

    def RecallStream(self, request_iterator, context):
        for req in request_iterator:
            yield self._recall(req, context)

    def Info(self, request, context):
        inst = self.inst
        counts = inst.ids.held.sum(axis=0)  # live observations (forgotten and replaced ones not counted)
        spaces = [pb.SpaceInfo(name=name, vectors=int(counts[i])) for i, name in inst.space_names().items()]
        now = time.monotonic()
        up = sum(inst.slot_up(s, now) for s in range(inst.slots))
        hdr = inst.header
        state = "draining" if hdr.admission_closed else ("running" if up == inst.slots else "degraded")
        return pb.InfoResponse(limits=wire.limits(self.p), spaces=spaces, backpressure=int(hdr.bp_state),
                               state=state, workers=inst.slots, workers_up=up,
                               active_sessions=self.sessions.count(), pressure=inst.pressure())
