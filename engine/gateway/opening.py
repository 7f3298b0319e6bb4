"""Opening and resuming a session on the gateway's table (``ObserveStream``'s init).

A session is attached to the stream that opened or resumed it in the same
hold of the table lock, so an eviction (``engine.gateway.eviction``) never
sees it detached in between. ``Init`` only checks the space name: a space
exists once a batch of it is accepted (``Engine.observe_into``), so sessions
that never send data cannot use up ``--max-spaces``.

Cluster mode (``gw.cluster`` set): a session may be resumed through any
gateway of the cluster. A gateway that does not know the session adopts it
with the client's id, from ``Init.resume_next_sequence``; one that knows it
moves its number forward to that value when the client is ahead (it sent
through another gateway meanwhile). The client's number is trusted because
the log is the guard, not this table: every batch is published with
``Nats-Msg-Id = session:first_sequence``, so a batch resent after a lost
ack is stored once whatever this table says (docs/cluster.md, "Clients").
On a single host the table is the only truth and the client's number is
ignored.
"""

from __future__ import annotations

import logging

import grpc

from engine.control.layouts import LANE_INDEX, LANES
from engine.control.sessions import S_LANE, S_SPACE_KEY, space_key
from engine.errors import InvalidInput, TableFull
from engine.producer import validation
from engine.rpc import wire

log = logging.getLogger("engram.gateway")

MAX_SESSION_ID = 1 << 63   # the table keeps ids in int64; gateways issue 63-bit ones


def open_session(gw, init, context, token) -> tuple[int, str, str, bool]:
    """(row, space, priority, resumed) for ``init``, attached to the stream ``token``;
    aborts the call with a status that says what to do otherwise."""
    try:
        space = validation.space_name(init.space)
        priority = wire.priority_name(init.priority)
    except InvalidInput as exc:
        # One rejection per refused init (it carries no observations), so that
        # a remote producer with a bad space name shows on the same
        # invalid_input panels as a local one; never under its own name.
        gw.engine.count_rejected(None, "invalid_input", 1)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    lane = LANE_INDEX[priority]
    with gw.table_lock:
        if init.resume_session_id:
            row = gw.sessions.find(init.resume_session_id)
            if row is None and gw.cluster:
                return _adopt(gw, init, context, token, space, priority)
            if row is None:
                context.abort(grpc.StatusCode.NOT_FOUND, gw.evictions.not_found(init.resume_session_id))
            rec = gw.sessions.rows[row]
            if int(rec[S_SPACE_KEY]) != space_key(space) or int(rec[S_LANE]) != lane:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"session {init.resume_session_id} was opened for another space or priority "
                              f"(priority {LANES[int(rec[S_LANE])]}); resume it with the space and "
                              f"priority it was opened with")
            gw.sessions.touch(row)
            if gw.cluster:
                gw.sessions.catch_up(row, init.resume_next_sequence)
            gw.attached[row] = token  # a resumed session moves to this stream
            gw.event("resumed")
            return row, space, priority, True
        row = _new_row(gw, context, lambda: gw.sessions.open(space_key(space), lane))
        gw.attached[row] = token
        gw.event("opened")
        return row, space, priority, False


def _new_row(gw, context, make) -> int:
    """``make()`` a row, evicting the longest-idle session without a stream
    when the table is full (caller holds the table lock)."""
    try:
        return make()
    except TableFull:
        evicted = gw.evictions.make_room(set(gw.attached))
        if evicted is None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, gw.evictions.full())
        log.info("session %d evicted after %.0fs without a stream: the session table is full", *evicted)
        gw.event("evicted")
        return make()


def _adopt(gw, init, context, token, space: str, priority: str) -> tuple[int, str, str, bool]:
    """Cluster mode: continue a session opened through another gateway (caller
    holds the table lock)."""
    sid = init.resume_session_id
    if sid >= MAX_SESSION_ID:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"session {sid} was not issued by a gateway of this cluster (ids are below 2**63)")
    row = _new_row(gw, context, lambda: gw.sessions.adopt(sid, space_key(space), LANE_INDEX[priority],
                                                          init.resume_next_sequence))
    gw.attached[row] = token
    gw.event("resumed")
    log.info("session %d resumed from another gateway of the cluster at sequence %d", sid,
             gw.sessions.next_seq(row))
    return row, space, priority, True
