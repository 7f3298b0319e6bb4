"""Forget in cluster mode: forgets travel through the log, owners apply them in
log order, a new owner replays them after a handoff, and a unary forget's
answer (applied, not_found) is the owner's, through any gateway."""

from __future__ import annotations

import numpy as np

from engine.client import Client
from engine.cluster import names
from tests.harness import wait_for
from tests.integration.test_cluster_ingest import DIM, P, all_owned, owned_partitions, start_hosts, stop_hosts

SPACES = ("cf-alpha", "cf-beta", "cf-gamma")


def live(h) -> dict[str, int]:
    return {s: v["vectors"] for s, v in h.status()["spaces"].items()}


def owner(hosts, space):
    p = names.partition_of(space, P)
    return next(h for h in hosts if p in owned_partitions(h))


def found(client, space, vecs, fresh) -> set[int]:
    out: set[int] = set()
    for lo in range(0, len(vecs), 200):
        res = client.recall(space, vecs[lo:lo + 200], k=50, fresh=fresh)
        assert res.complete, res
        out.update(res.ids.ravel().tolist())
    return out


def test_forgets_go_through_the_log_and_survive_a_handoff(tmp_path, nats1, request):
    hosts = start_hosts(tmp_path, nats1, "cfg", 2)
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        rng = np.random.default_rng(11)
        data, gone = {}, {}
        with Client(hosts[0].target) as c0, Client(hosts[1].target) as c1:
            for i, space in enumerate(SPACES):
                ids = np.arange(1, 1001, dtype=np.uint64) + 10_000 * i
                vecs = rng.standard_normal((1000, DIM)).astype(np.float32)
                data[space] = (ids, vecs)
                with c0.stream(space) as s:
                    assert s.send(ids, vecs).accepted == 1000
                    # a forget batch in the same session: ordered after its observations by the log
                    assert s.forget(ids[:100]).accepted == 100
                gone[space] = set(ids[:100].tolist())
                # a unary forget through the gateway that does not own the space:
                # the owner's answer, counted in log order. Ids 50..99 were
                # forgotten by the session's batch (stored first, perhaps still
                # queued on the owner); 7 ids were never observed.
                on_owner, elsewhere = (c0, c1) if owner(hosts, space) is hosts[0] else (c1, c0)
                unknown = np.arange(7, dtype=np.uint64) + 900_000
                res = elsewhere.forget(space, np.concatenate([ids[50:300], unknown]))
                assert res.accepted == 257 and res.applied, (space, res)
                assert res.not_found == 50 + 7, (space, res)
                assert live(owner(hosts, space)).get(space) == 700  # applied: counted out already
                # through the owner's own gateway: once applied, the same ids again are none found
                res = on_owner.forget(space, ids[100:150])
                assert res.applied and res.accepted == 50 and res.not_found == 50, (space, res)
                gone[space] |= set(ids[100:300].tolist())
                # fresh: waits for the owner to catch up with the log, so already never returns them
                assert not found(c0, space, vecs, fresh=True) & gone[space]
            wait_for(lambda: all(live(owner(hosts, s)).get(s) == 700 for s in SPACES), 60, 0.2,
                     "forgets applied by the owners")
            for space, (ids, vecs) in data.items():
                got = found(c1, space, vecs, fresh=False)
                assert not got & gone[space]
                assert len(got) >= 650
        # host 0 stops: host 1 takes its partitions over and replays their log
        moved = [s for s in SPACES if owner(hosts, s) is hosts[0]]
        hosts[0].terminate(60)
        wait_for(lambda: len(owned_partitions(hosts[1])) == P, 90, 0.2, "host 1 owns every partition")
        wait_for(lambda: all(live(hosts[1]).get(s) == 700 for s in SPACES), 90, 0.2,
                 "the new owner replayed observations and forgets")
        with Client(hosts[1].target) as c1:
            for space in SPACES:
                ids, vecs = data[space]
                assert not found(c1, space, vecs, fresh=True) & gone[space], (space, space in moved)
                # the new owner answers receipts too (300..309 live, 0..9 long gone)
                res = c1.forget(space, np.concatenate([ids[300:310], ids[:10]]))
                assert res.applied and res.accepted == 20 and res.not_found == 10, (space, res)
                assert live(hosts[1]).get(space) == 690
    finally:
        stop_hosts(hosts, request)
