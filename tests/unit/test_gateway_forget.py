"""The gateway's forget calls in process: the unary ``Forget`` and a
session's forget batches against a fake engine, and the cluster front's
refusal. No engine process, no sockets: the handlers are called with a fake
gRPC context (tests/integration/test_forget.py runs them for real)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from engine.cluster import codec
from engine.control.sessions import SessionTable
from engine.errors import InvalidInput, NotRunning
from engine.gateway import forgetting
from engine.gateway.service import Gateway
from engine.results import ForgetResult
from engine.rpc import engram_pb2 as pb


class Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """What the handlers use of a ``grpc.ServicerContext``."""

    def __init__(self, remaining: float | None = None):
        self.remaining = remaining

    def abort(self, code, details):
        raise Aborted(code, details)

    def time_remaining(self):
        return self.remaining


class FakeSpaces:
    def lookup(self, name):
        return 3 if name == "known" else None


class FakeEngine:
    """Holds ids per space; forgets remove them. ``refuse_after``: accept at
    most that many ids per call (the rest over_capacity)."""

    def __init__(self):
        self.spaces = FakeSpaces()
        self.held = {"known": {1, 2, 3, 4, 5}}
        self.rejected: list[tuple] = []
        self.calls: list[dict] = []
        self.refuse_after: int | None = None
        self.raise_exc: Exception | None = None

    def count_rejected(self, idx, reason, n):
        self.rejected.append((idx, reason, n))

    def _apply(self, space, ids) -> ForgetResult:
        if self.raise_exc is not None:
            raise self.raise_exc
        n = len(ids) if self.refuse_after is None else min(len(ids), self.refuse_after)
        held = self.held.setdefault(space, set())
        taken = [int(i) for i in ids[:n]]
        not_found = sum(i not in held for i in taken)
        held.difference_update(taken)
        rejected = {"over_capacity": len(ids) - n} if n < len(ids) else {}
        return ForgetResult(n, not_found, rejected, "normal", False, "high lane full" if rejected else "")

    def forget(self, space, ids, wait=True, timeout=10.0):
        self.calls.append({"space": space, "ids": list(map(int, ids)), "wait": wait, "timeout": timeout})
        res = self._apply(space, ids)
        res.applied = wait and res.accepted > 0
        return res

    def forget_into(self, space, ids, journal=None, on_publish=None):
        self.calls.append({"space": space, "ids": list(map(int, ids)), "journal": journal})
        res = self._apply(space, ids)
        if res.accepted and on_publish is not None:
            on_publish(res.accepted)
        return res


class InProcessGateway(Gateway):
    """``Gateway`` without shared memory: the state and retry hints are fixed."""

    def __init__(self, engine):
        self.engine = engine
        self.sessions = SessionTable(np.zeros((4, 8), np.int64))
        self.row_locks = [threading.Lock() for _ in range(4)]

    def _state(self, priority):
        return 1, False

    def _retry_ms(self, state, priority, lane_rejected=0):
        return 250 if lane_rejected else 0


def ids_bytes(*ids) -> bytes:
    return np.asarray(ids, "<u8").tobytes()


@pytest.fixture
def gw():
    return InProcessGateway(FakeEngine())


# -- unary Forget --------------------------------------------------------------------
def test_forget_answers_counts_waits_within_the_deadline_and_says_applied(gw):
    res = gw.Forget(pb.ForgetRequest(space="known", ids=ids_bytes(1, 2, 99)), Context(remaining=5.0))
    assert (res.count, res.accepted, res.not_found, dict(res.rejected), res.applied) == (3, 3, 1, {}, True)
    assert res.backpressure == pb.BACKPRESSURE_WARNING and res.retry_after_ms == 0
    call = gw.engine.calls[-1]
    assert call["wait"] is True and call["timeout"] == pytest.approx(5.0 - forgetting.REPLY_MARGIN_S)
    again = gw.Forget(pb.ForgetRequest(space="known", ids=ids_bytes(1, 2), no_wait=True), Context())
    assert (again.accepted, again.not_found, again.applied) == (2, 2, False)  # forget is idempotent
    assert gw.engine.calls[-1]["wait"] is False and gw.engine.calls[-1]["timeout"] == forgetting.DEFAULT_WAIT_S


def test_the_wait_never_goes_negative_and_has_a_default():
    assert forgetting.wait_s(None) == forgetting.DEFAULT_WAIT_S
    assert forgetting.wait_s(0.05) == 0.0
    assert forgetting.wait_s(2.0) == pytest.approx(1.9)


def test_forget_over_capacity_is_answered_with_a_retry_after(gw):
    gw.engine.refuse_after = 1
    res = gw.Forget(pb.ForgetRequest(space="known", ids=ids_bytes(1, 2, 3)), Context(1.0))
    assert (res.accepted, dict(res.rejected), res.retry_after_ms) == (1, {"over_capacity": 2}, 250)
    assert res.message == "high lane full"


def test_undecodable_ids_are_invalid_argument_and_counted(gw):
    with pytest.raises(Aborted) as err:
        gw.Forget(pb.ForgetRequest(space="known", ids=b"\0" * 12), Context(1.0))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "multiple of 8" in err.value.details
    with pytest.raises(Aborted):
        gw.Forget(pb.ForgetRequest(space="Not A Space", ids=b"\0" * 3), Context(1.0))
    # the known space's index, then _other (None) for a name that is not a space
    assert gw.engine.rejected == [(3, "invalid_input", 1), (None, "invalid_input", 1)]
    assert gw.engine.calls == []


@pytest.mark.parametrize("exc, code", [(InvalidInput("memory space 'X' must match"), grpc.StatusCode.INVALID_ARGUMENT),
                                       (NotRunning("instance 'e' is not running"), grpc.StatusCode.UNAVAILABLE)])
def test_engine_refusals_become_statuses_with_the_engines_text(gw, exc, code):
    gw.engine.raise_exc = exc
    with pytest.raises(Aborted) as err:
        gw.Forget(pb.ForgetRequest(space="X", ids=ids_bytes(1)), Context(1.0))
    assert err.value.code == code and err.value.details == str(exc)


# -- forget batches in a session -------------------------------------------------------
def test_forget_batches_are_numbered_deduplicated_and_gaps_refused(gw):
    row = gw.sessions.open(1, 0)
    ok = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=1, ids=ids_bytes(1, 2, 77)), Context())
    assert (ok.count, ok.accepted, ok.not_found, dict(ok.rejected), ok.next_sequence) == (3, 3, 1, {}, 4)
    assert gw.engine.calls[-1]["journal"] == (row, 1)
    dup = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=1, ids=ids_bytes(1, 2, 77)), Context())
    assert (dup.accepted, dict(dup.rejected), dup.next_sequence) == (0, {"duplicate": 3}, 4)
    assert "forget(s) from 1 were already accepted" in dup.message
    assert len(gw.engine.calls) == 1  # not applied twice
    overlap = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=3, ids=ids_bytes(77, 3)), Context())
    assert (overlap.accepted, dict(overlap.rejected), overlap.next_sequence) == (1, {"duplicate": 1}, 5)
    assert gw.engine.calls[-1]["ids"] == [3] and gw.engine.calls[-1]["journal"] == (row, 4)
    gap = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=9, ids=ids_bytes(4)), Context())
    assert dict(gap.rejected) == {"invalid_sequence": 1} and "expects first_sequence 5" in gap.message
    assert gap.next_sequence == 5 and gw.sessions.next_seq(row) == 5
    assert [r[1:] for r in gw.engine.rejected] == [("duplicate", 3), ("duplicate", 1), ("invalid_sequence", 1)]


def test_a_forget_batch_shares_the_numbers_of_observe_batches(gw):
    row = gw.sessions.open(1, 0)
    gw.sessions.advance(row, 1, 10)  # ten observations went in
    early = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=1, ids=ids_bytes(1)), Context())
    assert dict(early.rejected) == {"duplicate": 1}
    nxt = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=11, ids=ids_bytes(1, 2)), Context())
    assert (nxt.accepted, nxt.next_sequence) == (2, 13)


def test_bad_forget_batches_are_answered_in_the_ack_and_consume_no_numbers(gw):
    row = gw.sessions.open(1, 0)
    short = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=1, ids=b"\0" * 9), Context())
    assert dict(short.rejected) == {"invalid_input": 1} and "multiple of 8" in short.message
    gw.engine.raise_exc = InvalidInput("ids must be in [0, 2**64)")
    bad = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=1, ids=ids_bytes(1, 2)), Context())
    assert dict(bad.rejected) == {"invalid_input": 2} and bad.message == "ids must be in [0, 2**64)"
    assert gw.sessions.next_seq(row) == 1 and bad.next_sequence == 1
    gw.engine.raise_exc = None
    gw.engine.refuse_after = 1
    part = gw._forget_batch(row, "known", pb.ForgetBatch(first_sequence=1, ids=ids_bytes(1, 2)), Context())
    assert (part.accepted, dict(part.rejected), part.next_sequence, part.retry_after_ms) == \
        (1, {"over_capacity": 1}, 2, 250)


# -- cluster mode ----------------------------------------------------------------------
def test_a_forget_message_of_the_cluster_log_round_trips():
    body = codec.encode_forget("known", np.array([3, 9], np.uint64))
    space, priority, ids, vectors = codec.decode(body, 16)
    assert (space, priority, ids.tolist(), vectors) == ("known", "high", [3, 9], None)
    with pytest.raises(InvalidInput):
        codec.decode(body[:-1], 16)
