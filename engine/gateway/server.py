"""The gRPC gateway: remote producers and recall, a child of the supervisor.

It is a producer like any local one (``engine.producer.api.Engine``, with the
gateway's own metric row) plus sessions (``engine.control.sessions``): each
``ObserveStream`` is one session of one space and priority whose batches
carry sequence numbers. Per batch, in order:

1. bytes → arrays; a bad length is ``invalid_input`` (no number consumed);
2. sequence check against the session's next number: a gap is
   ``invalid_sequence``; an already-accepted prefix is ``duplicate``
   (acknowledged, not queued again);
3. the rest goes through validate → admit → register the space (the first
   accepted batch creates it; ``Init`` only checks the name) → one ring,
   whose publish journal advances the session's next number atomically
   with the records.

A stream that ends without Close leaves its session for a resume; when the
table is full, a new session evicts the longest-idle one no stream serves
(``engine.gateway.eviction``).

Protocol errors (no init first, a second init, an unknown message, bytes of
a recall that do not divide) end the call with a gRPC status and a clear
text; bad data inside a well-formed batch is answered in its ack and the
stream goes on. Every ack carries the backpressure state and, at critical
and above, a retry-after from the measured drain rate; a ``Status`` is
pushed when the state, or whether the session's priority is admitted,
changes.

Threads: the gRPC server's pool runs one handler per call; an
``ObserveStream`` handler also has a reader thread so that it can push a
status while the client is silent. The main thread samples the drain rate
and expires idle sessions. Nothing here is called from a signal handler.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import threading
import time
from concurrent import futures

import grpc

from engine import child
from engine.control import admission
from engine.control import pressure
from engine.producer import validation
from engine.rpc import wire
from engine.gateway.drain import DrainMeter, retry_after_s
from engine.gateway.eviction import Evictions
from engine.errors import InvalidInput, NotRunning
from engine.control.layouts import LANES, LANE_INDEX
from engine.control.records import GATEWAY
from engine.control.instance import Instance
from engine.producer.api import Engine
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.control.sessions import S_ACCEPTED, S_LANE, S_SPACE_KEY, SessionTable, space_key
from engine.errors import TableFull

log = logging.getLogger("engram.gateway")

INIT_TIMEOUT_S = 30.0      # a stream must send init within this
POLL_S = 0.1               # how often a silent stream checks for a status to push
DRAIN_TIMEOUT_S = 30.0     # Close(drain) default wait
TICK_S = 0.25
EXTRA_THREADS = 16         # handler threads beyond --max-sessions (unary calls, recall streams)

_END = object()


class _Reader:
    """Moves a call's request iterator into a bounded queue, on its own thread
    (bounded: a client cannot make the gateway buffer more than a few messages)."""

    def __init__(self, requests):
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self._stopped = threading.Event()
        self._t = threading.Thread(target=self._run, args=(requests,), daemon=True,
                                   name="engram-gateway-reader")
        self._t.start()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self.q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, requests) -> None:
        try:
            for msg in requests:
                if not self._put(msg):
                    return
        except Exception:  # the client went away: a cancelled call raises here
            pass
        self._put(_END)

    def get(self, timeout: float):
        """The next message, _END when the client is done, None on timeout."""
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self._stopped.set()


class Gateway(pb_grpc.EngramServicer):
    def __init__(self, inst: Instance, writer):
        self.inst = inst
        self.p = inst.params
        self.engine = Engine(inst, writer=writer)
        self.sessions = SessionTable(inst.session_rows)
        self.table_lock = threading.Lock()
        self.row_locks = [threading.Lock() for _ in range(self.sessions.capacity)]
        self.attached: dict[int, object] = {}  # session row -> token of the stream serving it
        self.evictions = Evictions(self.sessions, self.p.session_idle_timeout)
        self.meter = DrainMeter(inst.rings)
        self.capacity = sum(inst.capacity_by_lane())

    # -- bookkeeping ----------------------------------------------------------
    def _event(self, event: str) -> None:
        self.engine.record(lambda w: w.inc("sessions_total", event=event))

    def tick(self) -> None:
        """Main thread: drain rate; expire idle sessions no stream serves."""
        self.meter.sample()
        with self.table_lock:
            for row in self.sessions.idle(self.p.session_idle_timeout, keep=set(self.attached)):
                log.info("session %x expired after %.0fs idle", self.sessions.session_id(row),
                         self.p.session_idle_timeout)
                self.sessions.close(row)
                self._event("expired")

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
        reader = _Reader(request_iterator)
        try:
            first = reader.get(INIT_TIMEOUT_S)
            if first is None or first is _END or first.WhichOneof("kind") != "init":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "the first message of ObserveStream must be init (space, priority)")
            token = object()
            row, space, priority, resumed = self._open(first.init, context, token)
        except BaseException:
            reader.stop()
            raise
        try:
            state, refused = self._state(priority)
            yield pb.ServerMessage(ready=pb.Ready(
                session_id=self.sessions.session_id(row), next_sequence=self.sessions.next_seq(row),
                limits=wire.limits(self.p), backpressure=state, resumed=resumed))
            last_status = (state, refused)
            last_msg = time.monotonic()
            while True:
                msg = reader.get(POLL_S)
                if self.attached.get(row) is not token:
                    context.abort(grpc.StatusCode.ABORTED, "this session was resumed on another stream")
                if msg is _END:
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
                    elif kind == "close":
                        yield pb.ServerMessage(closed=self._closing(row, msg.close))
                        return
                    else:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      "init may be sent once, first; then batch or close"
                                      if kind == "init" else "empty ClientMessage: set batch or close")
                now = self._state(priority)
                if now != last_status:
                    last_status = now
                    yield pb.ServerMessage(status=self._status(priority, *now))
        finally:
            reader.stop()
            with self.table_lock:
                if self.attached.get(row) is token:
                    del self.attached[row]

    def _open(self, init, context, token) -> tuple[int, str, str, bool]:
        """Open or resume the session of ``init`` and attach it to the stream
        ``token`` (in the same lock hold: an eviction never sees it detached)."""
        try:
            space = validation.space_name(init.space)
            priority = wire.priority_name(init.priority)
        except InvalidInput as exc:
            # One rejection per refused init (it carries no observations), so
            # that a remote producer with a bad space name shows on the same
            # invalid_input panels as a local one; never under its own name.
            self.engine.count_rejected(None, "invalid_input", 1)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        lane = LANE_INDEX[priority]
        with self.table_lock:
            if init.resume_session_id:
                row = self.sessions.find(init.resume_session_id)
                if row is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, self.evictions.not_found(init.resume_session_id))
                rec = self.sessions.rows[row]
                if int(rec[S_SPACE_KEY]) != space_key(space) or int(rec[S_LANE]) != lane:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"session {init.resume_session_id:x} was opened for another space or priority "
                                  f"(priority {LANES[int(rec[S_LANE])]}); resume it with the space and "
                                  f"priority it was opened with")
                self.sessions.touch(row)
                self.attached[row] = token  # a resumed session moves to this stream
                self._event("resumed")
                return row, space, priority, True
            # Only validated, not registered: a space exists once a batch of it
            # is accepted (Engine.observe_into), so sessions that never send
            # data cannot use up --max-spaces.
            try:
                row = self.sessions.open(space_key(space), lane)
            except TableFull:
                evicted = self.evictions.make_room(set(self.attached))
                if evicted is None:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.evictions.full())
                log.info("session %x evicted after %.0fs without a stream: the session table is full", *evicted)
                self._event("evicted")
                row = self.sessions.open(space_key(space), lane)
            self.attached[row] = token
            self._event("opened")
            return row, space, priority, False

    def _close(self, row: int, event: str) -> None:
        with self.table_lock:
            self.sessions.close(row)
        self._event(event)

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
        first = batch.first_sequence
        ack = pb.BatchAck(first_sequence=first)
        idx = self.engine.spaces.lookup(space)
        try:
            ids = wire.unpack_ids(batch.ids)
            vectors = wire.unpack_rows(batch.vectors, self.p.dim, len(ids), "vectors")
        except InvalidInput as exc:
            n = max(1, len(batch.ids) // 8)
            return self._rejected_ack(ack, row, priority, idx, "invalid_input", n, str(exc))
        n = ack.count = len(ids)
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
                ack.message = f"{dup} observation(s) from {first} were already accepted; not queued again"
            if dup < n:
                try:
                    got = self.engine.observe_into(
                        space, ids[dup:], vectors[dup:], priority, journal=(row, nxt),
                        on_publish=lambda k: self.sessions.advance(row, nxt, k))
                except InvalidInput as exc:
                    ack.rejected["invalid_input"] = n - dup
                    ack.message = str(exc)
                except NotRunning as exc:
                    context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                else:
                    ack.accepted = got.accepted
                    for reason, k in got.rejected.items():
                        ack.rejected[reason] = k
                    if got.message:
                        ack.message = got.message
            ack.next_sequence = self.sessions.next_seq(row)
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
                                 distances=wire.pack_floats(res.distances), complete=res.complete)

    def Recall(self, request, context):
        return self._recall(request, context)

    def RecallStream(self, request_iterator, context):
        for req in request_iterator:
            yield self._recall(req, context)

    def Info(self, request, context):
        inst = self.inst
        counts = inst.shard_counts.sum(axis=0)
        spaces = [pb.SpaceInfo(name=name, vectors=int(counts[i])) for i, name in inst.space_names().items()]
        now = time.monotonic()
        up = sum(inst.slot_up(s, now) for s in range(inst.slots))
        hdr = inst.header
        state = "draining" if hdr.admission_closed else ("running" if up == inst.slots else "degraded")
        return pb.InfoResponse(limits=wire.limits(self.p), spaces=spaces, backpressure=int(hdr.bp_state),
                               state=state, workers=inst.slots, workers_up=up,
                               active_sessions=self.sessions.count(), pressure=inst.pressure())


class TokenAuth(grpc.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>``."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        got = dict(details.invocation_metadata).get("authorization", "")
        handler = continuation(details)
        if handler is None or hmac.compare_digest(got.encode(), self.expected):
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


def build_server(gw: Gateway, p: dict) -> tuple[grpc.Server, int]:
    """A started server bound to ``--grpc-addr``; returns it and its port."""
    size = p.grpc_max_message_bytes
    interceptors = [TokenAuth(read_token(p.auth_token_file))] if p.auth_token_file else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=p.max_sessions + EXTRA_THREADS,
                                                    thread_name_prefix="engram-gateway"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", size),
                                  ("grpc.max_send_message_length", size),
                                  ("grpc.so_reuseport", 0)],
                         maximum_concurrent_rpcs=p.max_sessions + EXTRA_THREADS)
    pb_grpc.add_EngramServicer_to_server(gw, server)
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
    inst = Instance.attach(name, GATEWAY)
    p = inst.params
    writer = NullWriter() if p.no_metrics else MetricWriter(inst.metrics, inst.metrics.row_map.GATEWAY)
    gw = Gateway(inst, writer)
    repaired = gw.sessions.repair(inst.rings)
    if repaired:
        log.info("completed %d session batch(es) a previous gateway published as it died", repaired)
    server, port = build_server(gw, p)
    inst.header.gateway_pid = os.getpid()
    inst.header.gateway_port = port
    log.info("gateway serving gRPC on %s (port %d), %d session(s) carried over", p.grpc_addr, port,
             gw.sessions.count())
    try:
        while os.getppid() == supervisor_pid or not supervisor_pid:
            if int(inst.header.sup_pid) != supervisor_pid and supervisor_pid:
                break
            time.sleep(TICK_S)
            gw.tick()
    finally:
        server.stop(grace=1.0)

