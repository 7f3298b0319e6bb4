"""Metrics and health of a real engine (2 workers), scraped over loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from engine.errors import InvalidInput
from metrics.catalog import CATALOG, PREFIX

# Live gauges the exporter computes from the cluster partition table (cluster mode only);
# tests/integration/test_cluster_metrics.py checks them on a real cluster host.
CLUSTER_MODE_ONLY = {"cluster_partition_epoch", "cluster_partitions_owned", "cluster_apply_lag_messages"}
from tests.harness import observe_all, wait_for

DIM = 16


def port_of(ep) -> int:
    return ep.exporter_port()


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def scrape(ep) -> dict[tuple[str, tuple], float]:
    code, _, text = get(f"http://127.0.0.1:{port_of(ep)}/metrics")
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples, name, **match) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == PREFIX + name and all(dict(labels).get(k) == str(x) for k, x in match.items()))


def test_counts_rejections_and_latency_through_the_exporter(engine_factory):
    ep = engine_factory(max_batch_size=300)
    eng = ep.engine()
    rng = np.random.default_rng(10)
    n = 0
    for i, (space, prio) in enumerate([("m-one", "high"), ("m-two", "normal"), ("m-one", "low")] * 10):
        observe_all(eng, space, np.arange(n, n + 100), rng.standard_normal((100, DIM)).astype(np.float32),
                    priority=prio)
        n += 100
    for bad in (np.full((5, DIM), np.nan, np.float32), np.ones((5, DIM + 1), np.float32)):
        try:
            eng.observe("m-one", np.arange(5), bad)
        except InvalidInput:
            pass
        else:
            raise AssertionError("bad input accepted")
    try:
        eng.observe("m-one", np.arange(301), np.ones((301, DIM), np.float32))
    except InvalidInput:
        pass
    wait_for(lambda: total(scrape(ep), "observations_total") == n, 60, message="all counted")
    eng.recall("m-one", rng.standard_normal((3, DIM)).astype(np.float32), k=5)
    s = scrape(ep)
    assert total(s, "observations_total", memory_space="m-one", priority="high") == 1000
    assert total(s, "observations_total", memory_space="m-one", priority="low") == 1000
    assert total(s, "observations_total", memory_space="m-two", priority="normal") == 1000
    assert total(s, "observations_rejected_total", memory_space="m-one", reason="invalid_input") == 311
    assert total(s, "observation_latency_seconds_count") == n
    assert total(s, "observation_latency_seconds_bucket", le="+Inf") == n
    assert total(s, "queue_wait_time_seconds_count") == n
    assert total(s, "batches_processed_total") >= n / 1000
    assert total(s, "batch_size_sum") == n
    assert total(s, "recall_latency_seconds_count", memory_space="m-one") == 1
    assert total(s, "recall_queries_total", memory_space="m-one") == 3
    assert total(s, "index_vectors", memory_space="m-one") == 2000
    assert total(s, "queue_capacity", priority="normal") == 20000
    assert total(s, "worker_up") == 2
    # The status command reads the same array.
    st = eng.status()
    assert st["throughput"]["observations_total"] == n
    assert st["throughput"]["observations_rejected_total"]["invalid_input"] == 311
    assert st["throughput"]["observation_latency_seconds"]["p99"] is not None


def test_every_catalog_metric_is_exported_from_start(engine_factory):
    ep = engine_factory()
    names = {n for n, _ in scrape(ep)}
    for m in CATALOG:
        if m.name in CLUSTER_MODE_ONLY:
            continue  # computed from the partition table, which a single host does not have
        family = {m.full_name, m.full_name + "_bucket", m.full_name + "_count"}
        assert names & family, f"{m.full_name} missing from a fresh scrape"


def test_kill_9_counters_never_decrease_and_worker_up_recovers(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    rng = np.random.default_rng(11)
    observe_all(eng, "survive", np.arange(500), rng.standard_normal((500, DIM)).astype(np.float32))
    wait_for(lambda: total(scrape(ep), "observations_total") == 500, 30, message="counted")
    before = scrape(ep)
    victim = ep.status()["workers"][0]["pid"]
    port = port_of(ep)
    os.kill(victim, signal.SIGKILL)

    def down_seen():
        code, _, body = get(f"http://127.0.0.1:{port}/health/ready")
        return code == 503 and "worker" in body
    wait_for(down_seen, 30, interval=0.01, message="/health/ready 503 while the worker is down")
    wait_for(lambda: get(f"http://127.0.0.1:{port}/health/ready")[0] == 200, 30, message="ready again")
    after = scrape(ep)
    assert total(after, "worker_restarts_total", worker_id=0, reason="signal") == 1
    assert total(after, "worker_up", worker_id=0) == 1
    for key, value in before.items():
        if key[0].endswith("_total") or key[0].endswith("_count") or key[0].endswith("_bucket"):
            assert after[key] >= value, f"{key} went down: {value} -> {after[key]}"
    health = json.loads(get(f"http://127.0.0.1:{port}/api/v1/system/health")[2])
    assert health["components"]["workers"]["status"] == "up"


def test_ready_is_503_when_overloaded_and_200_after(engine_factory):
    ep = engine_factory(capacity_high=300, capacity_normal=1000, capacity_low=20)
    eng = ep.engine()
    port = port_of(ep)
    pids = [w["pid"] for w in ep.status()["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        rng = np.random.default_rng(12)
        ack = eng.observe("pressure", np.arange(1000), rng.standard_normal((1000, DIM)).astype(np.float32))
        assert ack.accepted == 1000 and ack.backpressure == "warning"  # 1000 / 1320
        ack = eng.observe("pressure", np.arange(1000, 1100), rng.standard_normal((100, DIM)).astype(np.float32),
                          priority="high")
        assert ack.accepted == 100 and ack.backpressure == "critical"  # 1100 / 1320
        code, _, body = get(f"http://127.0.0.1:{port}/health/ready")
        assert code == 200, body  # critical still admits high and normal work
        ack = eng.observe("pressure", np.arange(1100, 1300), rng.standard_normal((200, DIM)).astype(np.float32),
                          priority="high")
        assert ack.accepted == 200 and ack.backpressure == "overloaded"  # 1300 / 1320
        refused = eng.observe("pressure", [5000], rng.standard_normal((1, DIM)).astype(np.float32))
        assert refused.rejected == {"over_capacity": 1}
        code, _, body = get(f"http://127.0.0.1:{port}/health/ready")
        assert code == 503 and "overloaded" in body, body
        s = scrape(ep)
        assert total(s, "backpressure_state") == 3
        assert total(s, "backpressure_activations_total", level="overloaded") == 1
        assert total(s, "observations_rejected_total", memory_space="pressure", reason="over_capacity") >= 1
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: get(f"http://127.0.0.1:{port}/health/ready")[0] == 200, 60, message="ready after drain")
    assert total(scrape(ep), "backpressure_state") == 0


def test_live_scrape_passes_promtool_in_both_formats(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    observe_all(eng, "promtool", np.arange(50), np.ones((50, DIM), np.float32))
    port = port_of(ep)
    code, ctype, text = get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    code, ctype, om = get(f"http://127.0.0.1:{port}/metrics", "application/openmetrics-text; version=1.0.0")
    assert code == 200 and ctype.startswith("application/openmetrics-text")
    assert om.rstrip().endswith("# EOF")
    assert get(f"http://127.0.0.1:{port}/health/live")[0] == 200


def test_exporter_is_restarted_when_killed(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    pass
    old = wait_for(lambda: int(eng.inst.header.exporter_pid), 30, message="exporter pid")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: int(eng.inst.header.exporter_pid) not in (0, old), 30, message="new exporter")
    wait_for(lambda: get(f"http://127.0.0.1:{port_of(ep)}/health/live")[0] == 200, 30,
             message="new exporter serving")


def test_worker_utilization_rises_under_load_and_stays_in_range(engine_factory):
    ep = engine_factory()
    eng = ep.engine()
    vecs = np.random.default_rng(13).standard_normal((1000, DIM)).astype(np.float32)
    sent = [0]

    def busy():
        eng.observe("busy", np.arange(sent[0], sent[0] + 1000), vecs)  # rejections are fine here
        sent[0] += 1000
        util = [v for (name, _), v in scrape(ep).items() if name == PREFIX + "worker_utilization_ratio"]
        assert len(util) == 2 and all(0.0 <= u <= 1.0 for u in util), util
        return max(util) > 0.3
    wait_for(busy, 60, interval=0.0, message="a worker more than 30% busy")
