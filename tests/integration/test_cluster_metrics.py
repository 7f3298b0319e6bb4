"""A cluster host's exporter reports the cluster metrics (one NATS server, one host).

The host takes every partition, the front publishes batches, the follower
applies them and uploads snapshots; each of these must show in /metrics.
"""

from __future__ import annotations

from engine.client import Client
from tests.integration.test_cluster_ingest import P, all_owned, dataset, wait_held, send_all, \
    start_hosts, stop_hosts
from tests.integration.test_metrics_live import scrape, total
from tests.harness import wait_for


def _cluster_metrics_moved(host, want: dict) -> bool:
    s = scrape(host)
    got = {
        "owned": total(s, "cluster_partitions_owned"),
        "min_epoch": min(total(s, "cluster_partition_epoch", partition=p) for p in range(P)),
        "published": total(s, "cluster_publish_latency_seconds_count"),
        "follower_up": total(s, "cluster_log_connected", client="follower"),
        "front_up": total(s, "cluster_log_connected", client="front"),
        "acquired": total(s, "cluster_lease_acquisitions_total", result="ok"),
        "renewed": total(s, "cluster_lease_renewals_total", result="ok"),
        "uploads": total(s, "cluster_snapshot_uploads_total", result="ok"),
        "uploaded_at": total(s, "cluster_snapshot_last_upload_timestamp_seconds"),
        "lag": total(s, "cluster_apply_lag_messages"),
        "confirmed": total(s, "cluster_forget_confirm_seconds_count", result="applied"),
    }
    want.update(got)
    return (got["owned"] == P and got["min_epoch"] >= 1 and got["published"] > 0
            and got["follower_up"] == 1 and got["front_up"] == 1 and got["acquired"] >= P
            and got["renewed"] > 0 and got["uploads"] > 0 and got["uploaded_at"] > 0 and got["lag"] == 0
            and got["confirmed"] == 1)


def test_cluster_metrics_move_on_a_working_host(tmp_path, nats1, request):
    hosts = start_hosts(tmp_path, nats1, "met", 1, cluster_snapshot_interval="1")
    host = hosts[0]
    try:
        wait_for(lambda: all_owned(hosts), 60, 0.2, "every partition owned by the host")
        data = dataset(8, 2000)
        assert send_all([host.target], data) == 2000
        wait_held(hosts, data, 60, "every observation applied")
        space, (ids, _) = next(iter(data.items()))
        with Client(host.target) as c:
            assert c.forget(space, ids[:10]).applied
        seen: dict = {}
        try:
            wait_for(lambda: _cluster_metrics_moved(host, seen), 60, 0.5, "cluster metrics reported")
        except Exception:
            raise AssertionError(f"last scrape: {seen}")
        s = scrape(host)
        assert total(s, "cluster_publish_failures_total") == 0
        assert total(s, "cluster_forget_confirm_seconds_count", result="unconfirmed") == 0
        assert total(s, "cluster_lease_conflicts_total") == 0
        assert total(s, "cluster_failovers_total") == 0
        # bounded by --partitions: one epoch series per partition
        assert sum(1 for (n, _) in s if n == "engram_streaming_cluster_partition_epoch") == P
    finally:
        stop_hosts(hosts, request)
