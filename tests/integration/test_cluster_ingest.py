"""Three NATS servers, three engine hosts: ingest through every gateway, recall through any.

Each observation must be inserted exactly once, on its partition's owner
only; recall through any host returns each sampled vector's own id first.
"""

from __future__ import annotations

import sys

import numpy as np

from engine.client import Client
from engine.cluster import names
from tests.cluster_helpers import ClusterHost
from tests.harness import WaitTimeout, wait_for

DIM = 16
P = 8


def start_hosts(tmp_path, nats, cluster: str, n: int, **flags) -> list[ClusterHost]:
    hosts = [ClusterHost(tmp_path, nats, cluster, f"h{i}", dim=DIM, partitions=P, **flags) for i in range(n)]
    try:
        for h in hosts:
            h.start(wait=False)
        for h in hosts:
            h.wait_ready(90)
    except BaseException:
        stop_hosts(hosts)  # the caller's finally is not reached: its try starts after this returns
        raise
    return hosts


def stop_hosts(hosts, request=None) -> None:
    # Called from a test's ``finally``: an exception on its way out is the
    # failure (the report of the call does not exist yet).
    failed = sys.exc_info()[0] is not None or (
        request is not None and getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed)
    for h in hosts:
        h.terminate(30)
        if failed:
            sys.stderr.write(f"\n--- log of {h.host_id} ---\n{h.log()}\n")
        h.cleanup()


def owned_partitions(h) -> set[int]:
    rows = h.engine().inst.partition_rows
    return {p for p in range(len(rows)) if int(rows[p, 0]) and int(rows[p, 1]) == 2}


def all_owned(hosts, live=None) -> bool:
    """Every partition served by exactly one host, and each host of ``live``
    (default: all) serving its share."""
    owned = [owned_partitions(h) for h in hosts]
    union = set().union(*owned)
    share = P // len(live if live is not None else hosts)
    return (len(union) == P and sum(len(o) for o in owned) == P
            and all(len(owned_partitions(h)) >= share for h in (live if live is not None else hosts)))


def owner_of(hosts, space: str):
    p = names.partition_of(space, P)
    owners = [h for h in hosts if p in owned_partitions(h)]
    return owners[0] if len(owners) == 1 else None


def holdings_mismatch(hosts, data) -> str:
    """What differs from "each space's owner holds exactly its acknowledged
    observations" ("" when nothing does)."""
    wrong = []
    for s, (ids, _) in sorted(data.items()):
        owner = owner_of(hosts, s)
        if owner is None:
            wrong.append(f"{s}: partition {names.partition_of(s, P)} has no single owner")
            continue
        held = counts_by_space(owner).get(s, 0)
        if held != len(ids):
            wrong.append(f"{s}: {owner.host_id} holds {held} of {len(ids)}")
    return "; ".join(wrong)


def owners_hold_everything(hosts, data) -> bool:
    """Each space's owner holds exactly its acknowledged observations."""
    return not holdings_mismatch(hosts, data)


def wait_held(hosts, data, timeout: float, message: str) -> None:
    """``wait_for(owners_hold_everything)``, saying on a timeout what differed."""
    try:
        wait_for(lambda: owners_hold_everything(hosts, data), timeout, 0.25, message)
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}: {holdings_mismatch(hosts, data)}") from None


def counts_by_space(h) -> dict[str, int]:
    eng = h.engine()
    counts = eng.inst.shard_counts.sum(axis=0)
    return {name: int(counts[i]) for i, name in eng.inst.space_names().items()}


def dataset(n_spaces: int, total: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    spaces = [f"space-{i:02d}" for i in range(n_spaces)]
    per = total // n_spaces
    data = {s: (np.arange(1, per + 1, dtype=np.uint64) + 1_000_000 * i,
                rng.standard_normal((per, DIM)).astype(np.float32)) for i, s in enumerate(spaces)}
    return data


def send_all(targets: list[str], data: dict, batch: int = 250) -> int:
    acked = 0
    clients = [Client(t) for t in targets]
    try:
        for i, (space, (ids, vecs)) in enumerate(sorted(data.items())):
            with clients[i % len(clients)].stream(space) as s:
                for lo in range(0, len(ids), batch):
                    ack = s.send(ids[lo:lo + batch], vecs[lo:lo + batch])
                    assert ack.accepted == len(ids[lo:lo + batch]), ack
                    acked += ack.accepted
    finally:
        for c in clients:
            c.close()
    return acked


def test_three_hosts_ingest_exactly_once_and_recall_anywhere(tmp_path, nats3, request):
    hosts = start_hosts(tmp_path, nats3, "ing", 3, log_replicas="3")
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "every partition owned by exactly one host")
        data = dataset(30, 20_000)
        acked = send_all([h.target for h in hosts], data)
        assert acked == 19_980

        wait_held(hosts, data, 120, "every acknowledged observation inserted on its partition's owner")
        per_host = [counts_by_space(h) for h in hosts]
        for s, (ids, _) in data.items():
            # exactly once on the owner; no host holds more than the owner
            # (a host that handed the partition over keeps a prefix, never served)
            assert counts_by_space(owner_of(hosts, s))[s] == len(ids)
            assert all(c.get(s, 0) <= len(ids) for c in per_host), s
        rng = np.random.default_rng(1)
        clients = [Client(h.target) for h in hosts]
        try:
            for i, s in enumerate(sorted(data)):
                ids, vecs = data[s]
                pick = rng.choice(len(ids), 3, replace=False)
                res = clients[i % 3].recall(s, vecs[pick], k=5)
                assert res.complete
                assert list(res.ids[:, 0]) == list(ids[pick]), s
            info = clients[0].info()
            assert info["state"] in ("running", "degraded")
        finally:
            for c in clients:
                c.close()
    finally:
        stop_hosts(hosts, request)


def test_fresh_recall_reads_its_own_writes_through_any_host(tmp_path, nats1, request):
    """``fresh=True``: the owner answers only once it applied the partition up to
    the stream's last sequence, so a batch acknowledged a moment ago is found,
    whichever gateway took it and whichever answers the recall."""
    hosts = start_hosts(tmp_path, nats1, "fr", 2)
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        rng = np.random.default_rng(4)
        clients = [Client(h.target) for h in hosts]
        try:
            n = 3000  # a batch whose insert takes a while: its last records are still queued
            for i in range(6):
                space = f"fresh-{i % 3}"
                ids = np.arange(1 + n * i, 1 + n * (i + 1), dtype=np.uint64)
                vecs = rng.standard_normal((n, DIM)).astype(np.float32)
                with clients[i % 2].stream(space) as s:
                    assert s.send(ids, vecs).accepted == n
                res = clients[(i + 1) % 2].recall(space, vecs[-10:], k=1, fresh=True)
                assert res.complete, res
                assert list(res.ids[:, 0]) == list(ids[-10:]), (i, res)
        finally:
            for c in clients:
                c.close()
    finally:
        stop_hosts(hosts, request)
