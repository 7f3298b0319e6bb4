"""A fourth host joins (partitions move by handoff, nothing lost or doubled),
``cluster drain`` moves them away again, ``cluster status`` shows it all."""

from __future__ import annotations

import json

from tests.cluster_helpers import ClusterHost, run_cli
from tests.harness import wait_for
from tests.integration.test_cluster_ingest import (DIM, P, all_owned, dataset, owned_partitions, wait_held,
                                                   send_all, start_hosts, stop_hosts)


def status(nats, cluster: str) -> dict:
    res = run_cli("cluster", "status", "--cluster", cluster, "--nats", nats.urls, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_join_handoff_then_drain(tmp_path, nats3, request):
    hosts = start_hosts(tmp_path, nats3, "mem", 3, log_replicas="3")
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over three hosts")
        data = dataset(16, 3200, seed=11)
        first = dict(sorted(data.items())[:8])
        send_all([h.target for h in hosts], first, batch=100)
        fourth = ClusterHost(tmp_path, nats3, "mem", "h3", dim=DIM, partitions=P, log_replicas="3")
        hosts.append(fourth)
        fourth.start()
        wait_for(lambda: all_owned(hosts), 60, 0.2, "the fourth host took its share by handoff")
        send_all([h.target for h in hosts], dict(sorted(data.items())[8:]), batch=100)
        wait_held(hosts, data, 60, "nothing lost or doubled after the join")
        st = status(nats3, "mem")
        assert {h["id"] for h in st["hosts"] if h["live"]} == {"h0", "h1", "h2", "h3"}
        assert all(p["owner"] for p in st["partitions"])
        wait_for(lambda: all(p["lag"] == 0 for p in status(nats3, "mem")["partitions"]), 30, 0.5, "no lag")
        res = run_cli("cluster", "drain", "h3", "--cluster", "mem", "--nats", nats3.urls)
        assert res.returncode == 0, res.stderr
        wait_for(lambda: not owned_partitions(fourth) and all_owned(hosts[:3]), 60, 0.2,
                 "the drained host's partitions moved to the others")
        wait_held(hosts[:3], data, 60, "nothing lost after the drain")
        text = run_cli("cluster", "status", "--cluster", "mem", "--nats", nats3.urls)
        assert text.returncode == 0 and "h3" in text.stdout and "UNOWNED" not in text.stdout
    finally:
        stop_hosts(hosts, request)


def test_graceful_stop_releases_leases_instead_of_letting_them_expire(tmp_path, nats1, request):
    # ttl 10 s: a released lease is taken at the survivor's next beat (every
    # ttl/3), an unreleased one only after it expired.
    hosts = start_hosts(tmp_path, nats1, "gs", 2, lease_ttl="10")
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "partitions spread over two hosts")
        leaving, staying = hosts
        assert owned_partitions(leaving)
        assert leaving.terminate(60) == 0
        log = leaving.log()
        assert "exited with" not in log, log  # the follower was not restarted while the host stopped
        wait_for(lambda: all_owned([staying]), 60, 0.2, "the survivor owns every partition")
        took = staying.log()
        assert "whose lease expired" not in took, took
    finally:
        stop_hosts(hosts, request)
