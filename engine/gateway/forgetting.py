"""Forget over gRPC: the unary ``Forget`` call and a session's forget batches.

A forget removes ids of one space: once it is applied, no recall returns
them (``Engine.forget``). Both ways in go through the same producer path as
a local caller; what the gateway adds:

* ``Forget``: bytes → ids (a bad length is ``INVALID_ARGUMENT``, counted as
  one ``invalid_input`` rejection per 8 bytes, at least 1); then
  ``Engine.forget``, which waits until the accepted forgets are applied
  unless the request says ``no_wait``. The wait ends ``REPLY_MARGIN_S``
  before the call's deadline, so that the answer (``applied = false`` if it
  ran out) reaches the caller before its deadline does; a call without a
  deadline waits at most ``DEFAULT_WAIT_S``. Bad ids or space names are
  ``INVALID_ARGUMENT`` (the engine counts them).
* ``ForgetBatch`` in an ``ObserveStream``: numbered, checked and
  deduplicated exactly as an observe batch (``Gateway._numbered``); the new
  part goes to ``Engine.forget_into`` with the session's publish journal,
  so the session's number advances atomically with the forgets' publication
  (``engine.control.sessions``), as for observations. Bad input is answered
  in the ack (``invalid_input``) and the stream goes on.

Forgets are admitted like ``high`` priority whatever the session's
priority, so the ack's retry-after is the high lane's.

Cluster mode refuses both (``engine.cluster.front``): a cluster does not
carry forgets through its log yet.
"""

from __future__ import annotations

import grpc

from engine.errors import InvalidInput, NotRunning
from engine.producer import validation
from engine.rpc import engram_pb2 as pb
from engine.rpc import wire

PRIORITY = "high"          # how forgets are admitted (DESIGN §8: refused only when the high lane is full)
REPLY_MARGIN_S = 0.1       # the wait for application ends this long before the call's deadline
DEFAULT_WAIT_S = 10.0      # the wait of a call without a deadline (Engine.forget's default)


class ForgetCalls:
    """The forget half of ``engine.gateway.service.Gateway`` (a mixin: it
    uses the gateway's engine, session table, row locks and ack helpers)."""

    def Forget(self, request, context):
        try:
            ids = wire.unpack_ids(request.ids)
        except InvalidInput as exc:
            self.engine.count_rejected(self._known_space(request.space), "invalid_input",
                                       max(1, len(request.ids) // 8))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            res = self.engine.forget(request.space, ids, wait=not request.no_wait,
                                     timeout=wait_s(context.time_remaining()))
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotRunning as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        state, _ = self._state(PRIORITY)
        over = res.rejected.get("over_capacity", 0)
        return pb.ForgetResponse(count=len(ids), accepted=res.accepted, not_found=res.not_found,
                                 rejected=res.rejected, backpressure=state, applied=res.applied,
                                 retry_after_ms=self._retry_ms(state, PRIORITY, over), message=res.message)

    def _known_space(self, space: str) -> int | None:
        """The space's index if the name is valid and registered (a rejection
        of an unknown or invalid name counts under ``_other``)."""
        try:
            return self.engine.spaces.lookup(validation.space_name(space))
        except InvalidInput:
            return None

    def _forget_batch(self, row: int, space: str, batch, context) -> pb.BatchAck:
        ack = pb.BatchAck(first_sequence=batch.first_sequence)
        idx = self.engine.spaces.lookup(space)
        try:
            ids = wire.unpack_ids(batch.ids)
        except InvalidInput as exc:
            return self._rejected_ack(ack, row, PRIORITY, idx, "invalid_input", max(1, len(batch.ids) // 8),
                                      str(exc))
        return self._numbered(row, PRIORITY, idx, ack, len(ids), "forget(s)",
                              lambda dup, nxt: self._queue_forget(row, space, ids[dup:], nxt, ack, context))

    def _queue_forget(self, row: int, space: str, ids, nxt: int, ack, context) -> None:
        """Queue the batch's new forgets (caller holds the session's row lock);
        the session's number advances atomically with their publication."""
        got = self._into_ack(ack, len(ids), context, lambda: self.engine.forget_into(
            space, ids, journal=(row, nxt), on_publish=lambda k: self.sessions.advance(row, nxt, k)))
        if got is not None:
            ack.not_found = got.not_found


def wait_s(remaining: float | None) -> float:
    """How long ``Forget`` waits for application, given the call's time left."""
    if remaining is None:
        return DEFAULT_WAIT_S
    return max(0.0, remaining - REPLY_MARGIN_S)
