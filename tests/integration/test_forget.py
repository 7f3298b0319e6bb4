"""Forget over gRPC and from the shell, against real engines over loopback.

The unary ``Forget`` (then no recall returns the ids, however large k),
forget batches interleaved with observe batches in one session (a resent
forget batch is a duplicate and is not applied again; a gap is refused),
bad input refused and counted in the exporter's metrics, the
``engram-stream forget`` command, and the cluster front's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.client import Client
from engine.errors import GatewayError
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from tests.gateway_helpers import RawStream, inserted, target, vectors
from tests.harness import ROOT, child_env, wait_for

K = 256  # the default --max-k: every vector of a space of at most 256


def recalled(client, space: str, queries, fresh: bool = False) -> set[int]:
    res = client.recall(space, queries, k=K, fresh=fresh)
    return {int(i) for i in res.ids.ravel()}


def rejected_metric(ep, reason: str) -> float:
    port = ep.exporter_port()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "engram_streaming_observations_rejected_total" and s.labels.get("reason") == reason)


def test_forget_over_grpc_then_no_recall_returns_the_ids(engine_factory):
    ep = engine_factory()
    n = 200
    ids, vecs = np.arange(n, dtype=np.uint64), vectors(n, 1)
    gone = ids[::3]
    with Client(target(ep)) as c:
        assert c.observe("forget-a", ids, vecs).accepted == n
        c.observe("forget-b", ids, vecs)  # the same ids in another space stay
        wait_for(lambda: inserted(ep, "forget-a") == n, 60, message="observations inserted")
        assert set(gone.tolist()) <= recalled(c, "forget-a", vecs[:5])

        unknown = np.arange(10_000, 10_007, dtype=np.uint64)
        res = c.forget("forget-a", np.concatenate([gone, unknown]), timeout=30)
        assert (res.accepted, res.not_found, res.rejected, res.applied) == (len(gone) + 7, 7, {}, True)
        seen = recalled(c, "forget-a", vecs) | recalled(c, "forget-a", vecs, fresh=True)
        assert not seen & set(gone.tolist()), sorted(seen & set(gone.tolist()))[:10]
        assert seen == set(ids.tolist()) - set(gone.tolist())  # k >= what is left: all of the rest
        assert recalled(c, "forget-b", vecs[:5]) == set(ids.tolist())  # spaces are apart

        again = c.forget("forget-a", gone[:10])  # idempotent: nothing left to find
        assert (again.accepted, again.not_found, again.applied) == (10, 10, True)
        # observed again after the forget: there again (applied in the order acknowledged)
        assert c.observe("forget-a", gone[:1], vecs[:1]).accepted == 1
        wait_for(lambda: int(gone[0]) in recalled(c, "forget-a", vecs[:1]), 30, message="re-observed id back")
        no_wait = c.forget("forget-a", gone[:1], wait=False)
        assert (no_wait.accepted, no_wait.not_found, no_wait.applied) == (1, 0, False)
        wait_for(lambda: int(gone[0]) not in recalled(c, "forget-a", vecs), 30, message="forget applied")


def test_a_session_interleaves_observe_and_forget_batches(engine_factory):
    ep = engine_factory()
    stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
    raw = RawStream(stub)

    def forget(first: int, *ids) -> pb.BatchAck:
        raw.send(forget=pb.ForgetBatch(first_sequence=first, ids=np.asarray(ids, "<u8").tobytes()))
        return raw.reply("ack")

    try:
        raw.send(init=pb.Init(space="sess-forget", priority=pb.PRIORITY_LOW))
        assert raw.reply("ready").next_sequence == 1
        vecs = vectors(10, 2)
        assert raw.batch(1, range(10), vecs).next_sequence == 11
        first = forget(11, 0, 1, 2)  # at once: an observation still queued counts as found
        assert (first.count, first.accepted, first.not_found, dict(first.rejected), first.next_sequence) == \
            (3, 3, 0, {}, 14)
        back = raw.batch(14, [1, 20, 21], vectors(3, 3))  # 1 observed again after its forget
        assert (back.accepted, back.next_sequence) == (3, 17)
        resent = forget(11, 0, 1, 2)  # a resend after a lost ack: acknowledged, not applied again
        assert (resent.accepted, resent.not_found, dict(resent.rejected), resent.next_sequence) == \
            (0, 0, {"duplicate": 3}, 17)
        gap = forget(30, 3)
        assert dict(gap.rejected) == {"invalid_sequence": 1} and "expects first_sequence 17" in gap.message
        raw.send(forget=pb.ForgetBatch(first_sequence=17, ids=b"\0" * 9))
        bad = raw.reply("ack")
        assert dict(bad.rejected) == {"invalid_input": 1} and bad.next_sequence == 17
        unknown = forget(17, 999, 3)
        assert (unknown.accepted, unknown.not_found, unknown.next_sequence) == (2, 1, 19)
        raw.send(close=pb.Close(drain=True))
        closed = raw.reply("closed")
        assert closed.drained and closed.next_sequence == 19 and closed.accepted_total == 18
    finally:
        raw.close()
    expected = {1, 4, 5, 6, 7, 8, 9, 20, 21}
    with Client(target(ep)) as c:
        allv = np.concatenate([vecs, vectors(3, 3)])
        wait_for(lambda: recalled(c, "sess-forget", allv) == expected, 30,
                 message=f"recall to hold exactly {sorted(expected)}")
    rejected = ep.engine().status()["throughput"]["observations_rejected_total"]
    assert (rejected["duplicate"], rejected["invalid_sequence"], rejected["invalid_input"]) == (3, 1, 1)


def test_the_python_session_forgets_and_resumes(engine_factory):
    ep = engine_factory()
    with Client(target(ep)) as c, c.stream("sess-client") as s:
        assert s.send(np.arange(5, dtype=np.uint64), vectors(5, 4)).accepted == 5
        wait_for(lambda: inserted(ep, "sess-client") == 5, 60, message="observations inserted")
        res = s.forget([0, 1, 77])
        assert (res.accepted, res.not_found, res.applied, s.next_sequence) == (3, 1, False, 9)
        s._drop()  # the connection breaks; the next call resumes the session by id
        assert s.forget([2]).accepted == 1 and s.next_sequence == 10
        # observed and forgotten at once: found (queued or inserted), applied in that order
        assert s.send([50], vectors(1, 7)).accepted == 1
        res = s.forget([50])
        assert (res.accepted, res.not_found, s.next_sequence) == (1, 0, 12)
        queries = np.concatenate([vectors(5, 4), vectors(1, 7)])
        wait_for(lambda: recalled(c, "sess-client", queries) == {3, 4}, 30, message="ids 3, 4 left")


def test_bad_forget_input_is_refused_and_counted(engine_factory):
    ep = engine_factory(max_batch_size=50)
    stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
    before = rejected_metric(ep, "invalid_input")
    cases = [
        (pb.ForgetRequest(space="Not A Space", ids=np.arange(2, dtype="<u8").tobytes()), "must match", 2),
        (pb.ForgetRequest(space="bad-forget", ids=b"\0" * 12), "multiple of 8", 1),
        (pb.ForgetRequest(space="bad-forget", ids=np.arange(51, dtype="<u8").tobytes()), "max-batch-size", 51),
    ]
    for request, text, _ in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Forget(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.value.details(), \
            err.value.details()
    want = before + sum(n for *_, n in cases)
    wait_for(lambda: rejected_metric(ep, "invalid_input") == want, 10,
             message=f"{want} invalid_input rejections in /metrics")
    with Client(target(ep)) as c:
        with pytest.raises(GatewayError) as err:
            c.forget("Not A Space", [1])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert c.info()["state"] == "running"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=120)


def test_forget_command_end_to_end(engine_factory, tmp_path):
    ep = engine_factory()
    n = 50
    vecs = vectors(n, 5)
    with Client(target(ep)) as c:
        c.observe("cli-forget", np.arange(n, dtype=np.uint64), vecs)
    wait_for(lambda: inserted(ep, "cli-forget") == n, 60, message="observations inserted")
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("3\n4 5\n900\n")
    out = run_cli("engram-stream", "forget", "--name", ep.name, "--space", "cli-forget", "--ids", "1,2",
                  "--ids-file", str(ids_file))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 of 6 forget(s) accepted, 1 not found; applied" in out.stdout
    out = run_cli(sys.executable, "-m", "engine", "forget", "--name", ep.name, "--space", "cli-forget",
                  "--ids", "1,6", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout)
    assert (got["accepted"], got["not_found"], got["applied"], got["rejected"]) == (2, 1, True, {})
    with Client(target(ep)) as c:
        assert recalled(c, "cli-forget", vecs) == set(range(n)) - {1, 2, 3, 4, 5, 6}
    out = run_cli(sys.executable, "-m", "engine", "forget", "--name", ep.name, "--ids", "1,-1")
    assert out.returncode == 2 and "'-1' is not an id" in out.stderr
