"""The gRPC gateway, really started as a child of a real engine, over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import urllib.request

import grpc
import numpy as np
import pytest

from engine.client import AsyncClient, Client
from engine.errors import GatewayError
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from tests.gateway_helpers import DIM, RawStream, enqueued, gateway_port, inserted, target, vectors
from tests.harness import wait_for


def test_three_clients_concurrently_all_inserted_spaces_isolated(engine_factory):
    ep = engine_factory()
    tgt = target(ep)
    n, batch = 5000, 250
    spaces = ["client-a", "client-b", "client-c"]
    acks: dict[str, list] = {s: [] for s in spaces}
    errors = []

    def run(i: int, space: str) -> None:
        try:
            ids = np.arange(n, dtype=np.uint64) + np.uint64(i * 1_000_000)
            vecs = vectors(n, i)
            with Client(tgt) as c, c.stream(space) as s:
                for lo in range(0, n, batch):
                    acks[space].append(s.send(ids[lo:lo + batch], vecs[lo:lo + batch]))
                assert s.next_sequence == n + 1
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(spaces)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for s in spaces:
        assert sum(a.accepted for a in acks[s]) == n and all(not a.rejected for a in acks[s])
    for s in spaces:
        wait_for(lambda s=s: inserted(ep, s) == n, 60, message=f"{s} inserted")
    assert enqueued(ep) == 3 * n
    with Client(tgt) as c:
        for i, s in enumerate(spaces):
            q = vectors(n, i)[:50]
            res = c.recall(s, q, k=5)
            lo, hi = i * 1_000_000, i * 1_000_000 + n
            assert ((res.ids >= lo) & (res.ids < hi)).all(), f"foreign ids in {s}"
            assert (res.ids[:, 0] == np.arange(50) + lo).mean() >= 0.95
        info = c.info()
    assert {k: info["spaces"][k] for k in spaces} == {s: n for s in spaces}
    assert info["active_sessions"] == 0  # every stream closed its session


def test_sequence_and_input_errors_are_answered_and_the_stream_goes_on(engine_factory):
    ep = engine_factory(max_batch_size=100, grpc_max_message_bytes=65536)
    stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
    raw = RawStream(stub)
    try:
        raw.send(init=pb.Init(space="errors", priority=pb.PRIORITY_NORMAL))
        ready = raw.reply("ready")
        assert ready.next_sequence == 1 and ready.limits.dim == DIM and ready.limits.max_batch == 100
        ok = raw.batch(1, [1, 2, 3], vectors(3, 1))
        assert (ok.accepted, dict(ok.rejected), ok.next_sequence) == (3, {}, 4)

        gap = raw.batch(10, [4], vectors(1, 2))
        assert dict(gap.rejected) == {"invalid_sequence": 1} and "expects first_sequence 4" in gap.message
        zero = raw.batch(0, [4], vectors(1, 2))
        assert dict(zero.rejected) == {"invalid_sequence": 1}
        dup = raw.batch(1, [1, 2, 3], vectors(3, 1))
        assert dict(dup.rejected) == {"duplicate": 3} and dup.accepted == 0 and dup.next_sequence == 4
        overlap = raw.batch(3, [3, 4], vectors(2, 3))
        assert dict(overlap.rejected) == {"duplicate": 1} and overlap.accepted == 1
        assert overlap.next_sequence == 5

        wrong_dim = raw.batch(5, [5, 6], vectors(2, 4, dim=DIM + 1))
        assert dict(wrong_dim.rejected) == {"invalid_input": 2} and "bytes" in wrong_dim.message
        nan = vectors(2, 5)
        nan[1, 3] = np.nan
        bad = raw.batch(5, [5, 6], nan)
        assert dict(bad.rejected) == {"invalid_input": 2} and "NaN or Inf" in bad.message
        odd = raw.batch(5, [5], raw_vectors=b"\0" * (4 * DIM - 1))
        assert dict(odd.rejected) == {"invalid_input": 1}
        raw.send(batch=pb.Batch(first_sequence=5, ids=b"\0" * 7, vectors=b""))
        short_ids = raw.reply("ack")
        assert dict(short_ids.rejected) == {"invalid_input": 1} and "multiple of 8" in short_ids.message
        big = raw.batch(5, np.arange(101) + 100, vectors(101, 6))
        assert dict(big.rejected) == {"invalid_input": 101} and "max-batch-size" in big.message
        # none of the rejected batches consumed a number: 5 is still next
        fine = raw.batch(5, [5, 6], vectors(2, 7))
        assert (fine.accepted, fine.next_sequence) == (2, 7)
        raw.send(close=pb.Close(drain=True))
        closed = raw.reply("closed")
        assert closed.drained and closed.accepted_total == 6 and closed.next_sequence == 7
    finally:
        raw.close()
    wait_for(lambda: inserted(ep, "errors") == 6, 30, message="6 inserted")
    st = ep.engine().status()
    rejected = st["throughput"]["observations_rejected_total"]
    assert rejected["invalid_sequence"] == 2 and rejected["duplicate"] == 4
    assert rejected["invalid_input"] == 2 + 2 + 1 + 1 + 101

    # protocol errors end the call with a status and a clear text
    for first, code, text in [
        (dict(batch=pb.Batch(first_sequence=1)), grpc.StatusCode.INVALID_ARGUMENT, "must be init"),
        (dict(init=pb.Init(space="Not A Space!")), grpc.StatusCode.INVALID_ARGUMENT, "must match"),
        (dict(init=pb.Init(space="errors", resume_session_id=12345)), grpc.StatusCode.NOT_FOUND,
         "unknown or expired"),
        (dict(init=pb.Init(space="errors", priority=7)), grpc.StatusCode.INVALID_ARGUMENT, "priority"),
    ]:
        r = RawStream(stub)
        r.send(**first)
        with pytest.raises(grpc.RpcError) as info:
            r.reply("ready")
        assert info.value.code() == code and text in info.value.details(), info.value.details()
        r.close()
    r = RawStream(stub)
    r.send(init=pb.Init(space="errors"))
    r.reply("ready")
    r.send(init=pb.Init(space="errors"))
    with pytest.raises(grpc.RpcError) as info:
        r.reply("ack")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "init may be sent once" in info.value.details()
    r.close()
    with pytest.raises(grpc.RpcError) as info:
        stub.Recall(pb.RecallRequest(space="errors", queries=b"\0" * 5, k=3))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4*dim" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Recall(pb.RecallRequest(space="errors", queries=vectors(1, 1).tobytes(), k=100_000))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    r = RawStream(stub)
    r.send(init=pb.Init(space="errors"))
    r.reply("ready")
    r.send(batch=pb.Batch(first_sequence=7, ids=b"\0" * 8, vectors=b"\0" * 70_000))  # > 64 KiB message
    with pytest.raises(grpc.RpcError) as info:
        r.reply("ack")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    r.close()
    # the engine and the gateway still serve
    with Client(target(ep)) as c:
        assert c.observe("errors", [100], vectors(1, 9)).accepted == 1
        assert c.info()["state"] == "running"


def _stop_workers(ep, sig) -> list[int]:
    inst = ep.engine().inst
    pids = [inst.live(s).pid for s in range(inst.slots)]
    for pid in pids:
        os.kill(pid, sig)
    return pids


def test_overload_retry_after_status_push_and_exactly_once_retries(engine_factory):
    ep = engine_factory(capacity_high=100, capacity_normal=1000, capacity_low=1000)
    tgt = target(ep)
    stub = pb_grpc.EngramStub(grpc.insecure_channel(tgt))
    statuses: list[pb.Status] = []
    low = RawStream(stub)
    low.send(init=pb.Init(space="overload", priority=pb.PRIORITY_LOW))
    low.reply("ready")

    def watch():
        try:
            for msg in low.call:
                if msg.WhichOneof("kind") == "status":
                    statuses.append(msg.status)
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    n = 3000
    ids, vecs = np.arange(n, dtype=np.uint64), vectors(n, 42)
    result = {}
    _stop_workers(ep, signal.SIGSTOP)
    try:
        def produce():
            with Client(tgt, retry_timeout=120) as c, c.stream("overload") as s:
                acks = [s.send(ids[lo:lo + 500], vecs[lo:lo + 500]) for lo in range(0, n, 500)]
                result["acks"] = acks

        producer = threading.Thread(target=produce)
        producer.start()
        # the normal lane fills (1000) while nothing drains; low work pushes pressure past critical
        raw = RawStream(stub)
        raw.send(init=pb.Init(space="overload-low", priority=pb.PRIORITY_LOW))
        raw.reply("ready")
        seq = 1

        def refused():
            nonlocal seq
            ack = raw.batch(seq, np.arange(200) + 10_000_000 + seq, vectors(200, seq))
            seq = ack.next_sequence
            return ack if ack.rejected.get("over_capacity") else None

        ack = wait_for(refused, 30, interval=0.05, message="an over_capacity rejection")
        assert ack.retry_after_ms > 0 and ack.backpressure >= pb.BACKPRESSURE_CRITICAL, ack
        wait_for(lambda: any(s.paused for s in statuses), 10, message="a paused status pushed to the low session")
        pushed = next(s for s in statuses if s.paused)
        assert pushed.backpressure >= pb.BACKPRESSURE_CRITICAL and "low priority is refused" in pushed.message
        raw.close()
        low_accepted = seq - 1
    finally:
        _stop_workers(ep, signal.SIGCONT)
    producer.join(150)
    assert "acks" in result, "the retrying producer did not finish"
    assert sum(a.accepted for a in result["acks"]) == n
    assert all(not a.rejected for a in result["acks"])
    wait_for(lambda: int(ep.engine().inst.header.bp_state) == 0, 60, message="state back to normal")
    wait_for(lambda: statuses and not statuses[-1].paused, 10, message="an unpaused status")
    wait_for(lambda: inserted(ep, "overload") == n, 60, message="all accepted inserted")
    assert enqueued(ep) == n + low_accepted  # every observation queued exactly once
    low.close()


def test_recall_over_grpc_equals_local_recall(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    n = 3000
    vecs = vectors(n, 3)
    with Client(target(ep)) as c:
        assert c.observe("same", np.arange(n), vecs).accepted == n
        wait_for(lambda: inserted(ep, "same") == n, 60, message="inserted")
        q = vectors(20, 99)
        remote = c.recall("same", q, k=10)
        local = eng.recall("same", q, k=10)
        np.testing.assert_array_equal(remote.ids, local.ids)
        np.testing.assert_allclose(remote.distances, local.distances, rtol=1e-6)
        assert remote.complete and local.complete
        fresh = c.recall("same", q[:2], k=3, fresh=True)
        assert fresh.ids.shape == (2, 3)
        stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
        reqs = [pb.RecallRequest(space="same", queries=q[i:i + 1].tobytes(), k=4) for i in range(5)]
        answers = list(stub.RecallStream(iter(reqs)))
        got = np.vstack([np.frombuffer(a.ids, "<u8").reshape(1, 4) for a in answers])
        np.testing.assert_array_equal(got, local.ids[:5, :4])


def test_bearer_token_required_when_auth_is_on(engine_factory, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    ep = engine_factory(auth_token_file=str(token_file))
    tgt = target(ep)
    for token in (None, "wrong"):
        with Client(tgt, token=token, retry_timeout=1) as c:
            with pytest.raises(GatewayError) as info:
                c.info()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(GatewayError) as info:
                c.observe("auth", [1], vectors(1, 1))
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert ("missing" if token is None else "wrong") in info.value.details
    with Client(tgt, token="s3cret-token") as c:
        assert c.observe("auth", [1, 2], vectors(2, 1)).accepted == 2
        assert c.info()["workers"] == 2


def test_tls(engine_factory, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ep = engine_factory(tls_cert=str(cert), tls_key=str(key))
    port = gateway_port(ep)
    with Client(f"localhost:{port}", tls_root_cert=str(cert)) as c:
        assert c.observe("tls", [1], vectors(1, 1)).accepted == 1
    with Client(f"localhost:{port}", retry_timeout=0.5, timeout=2) as c:
        with pytest.raises(GatewayError) as info:
            c.info()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_idle_sessions_expire_and_the_session_cap_holds(engine_factory):
    ep = engine_factory(session_idle_timeout=1, max_sessions=2)
    tgt = target(ep)
    stub = pb_grpc.EngramStub(grpc.insecure_channel(tgt))
    a, b = RawStream(stub), RawStream(stub)
    a.send(init=pb.Init(space="idle"))
    sid = a.reply("ready").session_id
    b.send(init=pb.Init(space="idle"))
    b.reply("ready")
    c = RawStream(stub)
    c.send(init=pb.Init(space="idle"))
    with pytest.raises(grpc.RpcError) as info:
        c.reply("ready")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max-sessions" in info.value.details()
    a.close()  # detached: expires on the gateway's tick
    with pytest.raises(grpc.RpcError) as info:  # attached but silent: the stream itself expires it
        b.reply("ack")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in info.value.details()
    with Client(tgt) as cl:
        wait_for(lambda: cl.info()["active_sessions"] == 0, 10, message="sessions expired")
    r = RawStream(stub)
    r.send(init=pb.Init(space="idle", resume_session_id=sid))
    with pytest.raises(grpc.RpcError) as info:
        r.reply("ready")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    r.close()
    port = ep.exporter_port()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'engram_streaming_sessions_total{event="expired"} 2.0' in text
    assert 'engram_streaming_sessions_total{event="opened"} 2.0' in text
    assert "engram_streaming_active_sessions 0.0" in text


def test_async_client(engine_factory):
    ep = engine_factory()
    tgt = target(ep)

    async def main():
        async with AsyncClient(tgt) as c:
            ack = await c.observe("asyncio", np.arange(100), vectors(100, 5))
            assert ack.accepted == 100 and not ack.rejected
            async with c.stream("asyncio-s", priority="high") as s:
                for lo in range(0, 1000, 100):
                    got = await s.send(np.arange(lo, lo + 100), vectors(100, lo + 1))
                    assert got.accepted == 100
                dup = await s.send(np.arange(0, 100), vectors(100, 1), first_sequence=1)
                assert dup.rejected == {"duplicate": 100} and dup.accepted == 0
                assert s.next_sequence == 1001
            info = await c.info()
            assert info["limits"]["dim"] == DIM
            # polled in a thread: the event loop keeps serving the channel meanwhile
            await asyncio.to_thread(wait_for, lambda: inserted(ep, "asyncio") >= 100, 60,
                                    message="100 observations inserted")
            res = await c.recall("asyncio", vectors(100, 5)[:3], k=1)
            return res

    res = asyncio.run(main())
    assert res.ids[:, 0].tolist() == [0, 1, 2]
    wait_for(lambda: inserted(ep, "asyncio-s") == 1000, 60, message="stream inserted")
