"""Memory-space names match the whole string, at every way in: producers,
the gateway, and names read back from disk or from a dead run's memory.

"a"*64 + "\\n" once passed the check (``$`` matches before a trailing
newline) and was stored as its first 64 bytes: after a restart it was the
space "a"*64, and a recall there returned the other one's ids.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import grpc
import hnswlib
import numpy as np
import pytest

from tests.harness import batch, observe_all, wait_for
from engine.client import Client
from engine.errors import GatewayError, InvalidInput
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.storage import recovery, snapshots
from engine.storage.walgen import WalLog
from engine.supervisor import salvage
from engine.worker.shards import ShardSet
from tests.gateway_helpers import RawStream, target

DIM = 16
META = {"slot": 0, "dim": DIM, "metric": "l2"}
LONG = "a" * 64
BAD = LONG + "\n"


class Recorder:
    """Stands in for a MetricWriter."""

    def __init__(self):
        self.counts: dict[str, float] = {}

    def inc(self, name, value=1, **labels):
        self.counts[name] = self.counts.get(name, 0) + value


def registry():
    names: dict[str, int] = {}
    return names, lambda name: names.setdefault(name, len(names))


# -- recovery from disk (unit) --------------------------------------------------------
def test_log_records_of_an_invalid_name_are_skipped_and_counted(tmp_path, caplog):
    data = str(tmp_path)
    log = WalLog(data, 0, "never")
    log.append(LONG, *batch(10, 1))
    log.append(BAD, *batch(7, 2, 100))  # what an older engine could have logged
    log.append("abc\r", *batch(3, 3, 200))
    log.append(LONG, *batch(5, 4, 300))
    log.close()
    names, register = registry()
    shards, rec = ShardSet(DIM, "l2", 8, 50, 32, 64), Recorder()
    with caplog.at_level(logging.ERROR, logger="engram.worker"):
        out = recovery.recover(data, 0, META, shards, register, lambda s, c: None, rec)
    assert names == {LONG: 0}
    assert sorted(shards.shards[0].get_ids_list()) == list(range(10)) + list(range(300, 305))
    assert (out.records, out.vectors, out.skipped_records) == (2, 15, 2)
    assert rec.counts["wal_records_skipped_total"] == 2 and rec.counts["wal_records_recovered_total"] == 2
    text = caplog.text
    assert "not a valid memory-space name" in text and repr(BAD) in text and repr("abc\r") in text


def test_snapshot_shard_of_an_invalid_name_is_skipped_and_counted(tmp_path, caplog):
    data = str(tmp_path)
    sdir = snapshots.slot_dir(data, 0)

    def index(ids, vecs):
        ix = hnswlib.Index(space="l2", dim=DIM)
        ix.init_index(max_elements=len(ids), M=8, ef_construction=50)
        ix.add_items(vecs, ids)
        return ix

    good, bad = batch(20, 5), batch(30, 6, 1000)
    entry = snapshots.write(sdir, 1, [(LONG, index(*good)), (BAD, index(*bad))], META)
    snapshots.write_manifest(sdir, 0, [entry])
    names, register = registry()
    shards, rec = ShardSet(DIM, "l2", 8, 50, 32, 64), Recorder()
    with caplog.at_level(logging.ERROR, logger="engram.worker"):
        out = recovery.recover(data, 0, META, shards, register, lambda s, c: None, rec)
    assert out.loaded == entry and names == {LONG: 0}
    assert sorted(shards.shards[0].get_ids_list()) == list(range(20))  # none of the other 30
    assert out.skipped_shards == 1 and rec.counts["snapshot_shards_skipped_total"] == 1
    assert "not a valid memory-space name" in caplog.text


def test_a_dead_runs_records_of_an_invalid_name_are_not_carried_over(monkeypatch, caplog):
    ids, vecs = batch(6, 7)
    ring = SimpleNamespace(ring_id=0, ids=ids, vectors=vecs, spaces=np.array([0, 0, 1, 1, 1, 0]),
                           stamps=np.arange(6, dtype=np.uint64), kinds=np.zeros(6, np.uint8),
                           uncommitted=lambda: (np.arange(6), np.full(6, -1)))
    old = SimpleNamespace(name="x", slots=1, dim=DIM, rings=[ring], space_names=lambda: {0: LONG, 1: BAD},
                          close=lambda: None)
    monkeypatch.setattr(salvage.Instance, "attach", staticmethod(lambda name, role: old))
    with caplog.at_level(logging.ERROR, logger="engram.supervisor"):
        got = salvage.collect("x", 1, DIM)
    assert [(g.space, g.ids.tolist()) for g in got] == [(LONG, [0, 1, 5])]
    assert "3 queued observation(s)" in caplog.text and "not a valid name" in caplog.text


# -- a real engine --------------------------------------------------------------------
def rejected_invalid(ep) -> int:
    return ep.engine().status()["throughput"]["observations_rejected_total"].get("invalid_input", 0)


def restart(ep) -> None:
    """Stop ``ep`` gracefully and start it again on the same name and data directory."""
    assert ep.terminate(60) == 0, ep.log()
    ep._engine.close()
    ep._engine = None
    ep._log.close()
    ep.start()


def test_newline_name_is_refused_locally_and_over_grpc_and_spaces_stay_apart_after_restart(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    ids_a, vecs_a = batch(300, 10)
    ids_b, vecs_b = batch(300, 11, 10_000)
    observe_all(eng, LONG, ids_a, vecs_a)
    observe_all(eng, LONG[:-1], ids_b, vecs_b)  # a prefix: the nearest name there is
    before = rejected_invalid(ep)

    with pytest.raises(InvalidInput, match="must match"):
        eng.observe(BAD, ids_b[:4], vecs_b[:4])
    with pytest.raises(InvalidInput, match="must match"):
        eng.recall(BAD, vecs_a[:1])
    stub = pb_grpc.EngramStub(grpc.insecure_channel(target(ep)))
    raw = RawStream(stub)
    raw.send(init=pb.Init(space=BAD))
    with pytest.raises(grpc.RpcError) as info:
        raw.reply("ready")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "must match" in info.value.details()
    raw.close()
    with pytest.raises(grpc.RpcError) as info:
        stub.Recall(pb.RecallRequest(space=BAD, queries=vecs_a[:1].tobytes(), k=3))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(target(ep), retry_timeout=5) as c:
        with pytest.raises(GatewayError) as err:
            c.observe(BAD, ids_b[:2], vecs_b[:2])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # 4 observations refused locally, and one per refused gRPC init (two)
    assert rejected_invalid(ep) - before == 4 + 2
    assert int(eng.inst.header.spaces) == 2 and sorted(eng.inst.space_names().values()) == [LONG[:-1], LONG]

    def inserted():
        return {k: v["vectors"] for k, v in ep.status()["spaces"].items()}
    wait_for(lambda: inserted() == {LONG: 300, LONG[:-1]: 300}, 60, message="both spaces inserted")
    restart(ep)
    eng = ep.engine()
    assert inserted() == {LONG: 300, LONG[:-1]: 300}
    for space, ids, vecs, other in ((LONG, ids_a, vecs_a, ids_b), (LONG[:-1], ids_b, vecs_b, ids_a)):
        res = eng.recall(space, vecs, k=5)
        assert res.complete and np.isin(res.ids, ids).all() and not np.isin(res.ids, other).any(), space
        assert (res.ids[:, 0] == ids).mean() >= 0.98
    with pytest.raises(InvalidInput):
        eng.recall(BAD, vecs_a[:1])
