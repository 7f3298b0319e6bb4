"""Cluster mode refuses bad configuration at start: exit 2 and a message naming the flag."""

from __future__ import annotations

import asyncio

import pytest

from engine import config
from engine.cli.main import build_parser
from engine.cluster import bootstrap
from engine.errors import ConfigError
from tests.cluster_helpers import free_port, run_cli


def cluster_config(argv: list[str]):
    args = build_parser().parse_args(["run", *argv])
    return config.resolve(args, "run", env={})


def run_args(tmp_path, nats: str, *extra: str) -> list[str]:
    return ["run", "--name", f"cfg{free_port()}", "--data-dir", str(tmp_path / "d"), "--cluster", "c1",
            "--nats", nats, "--host-id", "h1", "--grpc-addr", f"127.0.0.1:{free_port()}",
            "--metrics-addr", "127.0.0.1:0", "--workers", "1", "--no-pin", "--dim", "16",
            "--log-replicas", "1", *extra]


def test_unreachable_nats_exits_2_naming_the_flag(tmp_path):
    res = run_cli(*run_args(tmp_path, f"nats://127.0.0.1:{free_port()}"), timeout=60)
    assert res.returncode == 2, res.stderr
    assert "--nats=" in res.stderr and "cannot connect" in res.stderr


@pytest.mark.parametrize("drop,flag", [("--host-id", "--host-id"), ("--nats", "--nats")])
def test_cluster_needs_its_flags(tmp_path, drop, flag):
    argv = run_args(tmp_path, "nats://127.0.0.1:1")
    i = argv.index(drop)
    del argv[i:i + 2]
    res = run_cli(*argv)
    assert res.returncode == 2
    assert flag in res.stderr


def test_random_grpc_port_needs_advertise(tmp_path):
    argv = run_args(tmp_path, "nats://127.0.0.1:1")
    argv[argv.index("--grpc-addr") + 1] = "127.0.0.1:0"
    res = run_cli(*argv)
    assert res.returncode == 2 and "--advertise" in res.stderr


def test_single_host_mode_is_the_default():
    cfg = cluster_config([])
    assert cfg.cluster is None and cfg.partitions == 64 and cfg.log_replicas == 3 and cfg.lease_ttl == 10.0


def test_partitions_dim_and_metric_must_match_the_cluster(nats1, tmp_path):
    base = ["--cluster", "c2", "--nats", nats1.urls, "--host-id", "a", "--grpc-addr", "127.0.0.1:7000",
            "--log-replicas", "1", "--dim", "16", "--partitions", "8"]
    meta = asyncio.run(bootstrap._check(cluster_config(base)))
    assert meta["partitions"] == 8 and meta["dim"] == 16
    assert asyncio.run(bootstrap._check(cluster_config(base)))["partitions"] == 8  # idempotent
    for flag, value in (("--partitions", "16"), ("--dim", "32"), ("--metric", "l2")):
        argv = base + [flag, value]
        with pytest.raises(ConfigError, match=f"{flag}={value} differs from cluster 'c2'"):
            asyncio.run(bootstrap._check(cluster_config(argv)))
    # and through the command line: exit 2
    res = run_cli(*run_args(tmp_path, nats1.urls, "--cluster", "c2", "--partitions", "16"))
    assert res.returncode == 2 and "--partitions=16 differs" in res.stderr, res.stderr


def test_more_log_replicas_than_servers_is_refused(nats1, tmp_path):
    res = run_cli(*run_args(tmp_path, nats1.urls, "--cluster", "c3", "--log-replicas", "3"))
    assert res.returncode == 2 and "--log-replicas" in res.stderr, res.stderr


def test_hosts_starting_together_all_find_the_cluster(nats1):
    """Hosts racing to create the same stream, bucket and object store all
    succeed: the server can refuse the loser of a create race with "subjects
    overlap", naming the stream the winner just made."""
    from engine.cluster.connection import connect

    async def host(p):
        nc = await connect(p, "race", first_attempt_only=True)
        try:
            return await bootstrap.ensure(nc.jetstream(timeout=bootstrap.REQUEST_TIMEOUT_S), p)
        finally:
            await nc.close()

    async def race(cluster: str):
        p = cluster_config(["--cluster", cluster, "--nats", nats1.urls, "--host-id", "a",
                            "--grpc-addr", "127.0.0.1:7000", "--log-replicas", "1", "--dim", "16",
                            "--partitions", "8"])
        return await asyncio.gather(*(host(p) for _ in range(8)), return_exceptions=True)

    for i in range(20):
        metas = asyncio.run(race(f"race{i}"))
        assert all(isinstance(m, dict) and m["partitions"] == 8 for m in metas), metas


def test_a_foreign_stream_holding_the_subjects_is_refused(nats1):
    """The retry after a refused create is for races only: a stream of another
    name that holds the cluster's subjects is still a refusal naming the flag."""
    import nats

    from engine.cluster import names

    async def squat():
        nc = await nats.connect(nats1.urls)
        try:
            await nc.jetstream().add_stream(name="SQUATTER", subjects=[names.subjects("c4")])
        finally:
            await nc.close()

    asyncio.run(squat())
    p = cluster_config(["--cluster", "c4", "--nats", nats1.urls, "--host-id", "a", "--grpc-addr",
                        "127.0.0.1:7000", "--log-replicas", "1", "--dim", "16", "--partitions", "8"])
    with pytest.raises(ConfigError, match="--cluster=c4: JetStream refused.*overlap"):
        asyncio.run(bootstrap._check(p))


def test_a_forget_receipt_is_asked_again_until_the_owner_says_applied(nats1):
    """The front's side of ``engine.cluster.receipts`` against a real server:
    silence and "pending" are asked again until the deadline; "applied" ends it."""
    import json
    import time

    import nats

    from engine.cluster import names
    from engine.cluster.logclient import LogClient

    p = cluster_config(["--cluster", "c5", "--nats", nats1.urls, "--host-id", "a", "--grpc-addr",
                        "127.0.0.1:7000", "--log-replicas", "1", "--dim", "16", "--partitions", "8"])
    asyncio.run(bootstrap._check(p))
    front = LogClient(p)
    try:
        t0 = time.monotonic()
        assert front.receipt(3, 10, 0.6) is None  # nobody subscribed: no answer, no error
        assert 0.5 <= time.monotonic() - t0 < 3.0

        asked = []

        async def owner():
            nc = await nats.connect(nats1.urls)

            async def reply(msg):
                req = json.loads(msg.data)
                asked.append(req)
                state = "applied" if len(asked) >= 3 else "pending"
                await msg.respond(json.dumps({"state": state, "not_found": 4 if state == "applied" else None}).encode())
            await nc.subscribe(names.receipt_subject("c5", 3), cb=reply)
            return nc

        nc = front.call(owner())
        try:
            assert front.receipt(3, 10, 5.0) == {"state": "applied", "not_found": 4}
            assert len(asked) == 3 and all(a["seq"] == 10 and 0 < a["wait_s"] <= 1.0 for a in asked), asked
        finally:
            front.call(nc.close())
    finally:
        front.close()
