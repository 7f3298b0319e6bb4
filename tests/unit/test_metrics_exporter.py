"""The exporter's HTTP server over a real collector, on loopback."""

import gzip
import http.client
import json
import os
import subprocess
import uuid

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import \
    text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metrics.array import MetricArray
from metrics.collector import ArrayCollector
from metrics.exporter import parse_addr, serve
from metrics.writer import MetricWriter
from shm.segment import SHM_DIR, object_name

P = "engram_streaming_"
PROMTOOL = "/usr/bin/promtool"

HEALTHY = {"live": True, "ready": True, "reason": "",
           "components": {"worker-0": {"status": "up", "reason": "", "since": 1.5}}}
UNHEALTHY = {"live": False, "ready": False, "reason": "no worker heartbeating",
             "components": {"worker-0": {"status": "down", "reason": "crashed", "since": 2.0}}}


class Health:
    """A health() whose answer the test switches."""

    def __init__(self):
        self.state = HEALTHY

    def __call__(self):
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


@pytest.fixture
def exporter():
    """A populated array in a real segment, and a server on 127.0.0.1:0."""
    name = object_name(f"t{os.getpid()}x{uuid.uuid4().hex[:8]}", "metrics")
    arr = MetricArray.create(name, n_workers=2, max_spaces=4, producer_rows=2)
    server = None
    try:
        w = MetricWriter(arr, arr.row_map.worker(0))
        w.inc("observations_total", 1000, memory_space=0, priority="normal")
        w.inc("batches_processed_total", worker_id=0)
        w.observe("batch_size", 1000, worker_id=0)
        w.observe_many("observation_latency_seconds", np.array([0.002, 0.02, 0.2, 2.0, 20.0]),
                       memory_space=0)
        w.set("worker_utilization_ratio", 0.5, worker_id=0)
        live = {"queue_depth": [({"priority": p}, d) for p, d in
                                (("high", 1), ("normal", 2), ("low", 3))],
                "queue_capacity": [({"priority": p}, 10) for p in ("high", "normal", "low")],
                "queue_memory_bytes": [({}, 4096)], "backpressure_state": [({}, 0)]}
        collector = ArrayCollector(arr, lambda: {0: "default", 1: "alpha"}, lambda: live)
        health = Health()
        server = serve("127.0.0.1:0", collector, health)
        yield server, health
    finally:
        if server is not None:
            server.shutdown()
        arr.close()
        arr.unlink()
        assert not os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def get(server, path, method="GET", **headers):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.getheader("Content-Encoding"), \
            resp.read()
    finally:
        conn.close()


def test_binds_only_the_given_address(exporter):
    server, _ = exporter
    assert server.server_address[0] == "127.0.0.1" and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_metrics_text_format(exporter):
    server, _ = exporter
    status, ctype, _, body = get(server, "/metrics", Accept="text/plain")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in parse_text(body.decode())}
    obs = {tuple(sorted(s.labels.items())): s.value for s in fams[P + "observations"].samples}
    assert obs[(("memory_space", "default"), ("priority", "normal"))] == 1000
    assert obs[(("memory_space", "alpha"), ("priority", "high"))] == 0
    assert obs[(("memory_space", "_other"), ("priority", "low"))] == 0
    lat = {(s.name, s.labels.get("le")): s.value for s in fams[P + "observation_latency_seconds"].samples
           if s.labels["memory_space"] == "default"}
    n = P + "observation_latency_seconds"
    assert lat[(n + "_bucket", "0.005")] == 1 and lat[(n + "_bucket", "0.5")] == 3
    assert lat[(n + "_bucket", "5.0")] == 4
    assert lat[(n + "_bucket", "+Inf")] == lat[(n + "_count", None)] == 5
    assert lat[(n + "_sum", None)] == pytest.approx(22.222)
    depth = {s.labels["priority"]: s.value for s in fams[P + "queue_depth"].samples}
    assert depth == {"high": 1, "normal": 2, "low": 3}
    assert fams[P + "worker_utilization_ratio"].samples[0].value == 0.5


def test_metrics_openmetrics_format(exporter):
    server, _ = exporter
    status, ctype, _, body = get(server, "/metrics",
                                 Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in parse_openmetrics(text)}
    assert fams[P + "observations"].type == "counter"
    total = sum(s.value for s in fams[P + "batches_processed"].samples if s.name.endswith("_total"))
    assert total == 1
    assert fams[P + "batch_size"].type == "histogram"


def test_metrics_gzip(exporter):
    server, _ = exporter
    status, _, encoding, body = get(server, "/metrics", **{"Accept-Encoding": "gzip"})
    assert status == 200 and encoding == "gzip"
    assert P + "observations_total" in gzip.decompress(body).decode()


def test_promtool_check_metrics_is_clean(exporter):
    server, _ = exporter
    _, _, _, body = get(server, "/metrics")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stdout + proc.stderr


def test_health_endpoints_healthy(exporter):
    server, _ = exporter
    status, ctype, _, body = get(server, "/health/live")
    assert (status, ctype, json.loads(body)) == (200, "application/json", {"status": "ok"})
    status, _, _, body = get(server, "/health/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    status, _, _, body = get(server, "/api/v1/system/health")
    assert (status, json.loads(body)) == (200, HEALTHY)


def test_health_endpoints_unhealthy(exporter):
    server, health = exporter
    health.state = UNHEALTHY
    status, _, _, body = get(server, "/health/live")
    assert status == 503 and json.loads(body)["reason"] == "no worker heartbeating"
    status, _, _, body = get(server, "/health/ready")
    assert (status, json.loads(body)) == (503, {"status": "not_ready",
                                                "reason": "no worker heartbeating"})
    status, _, _, body = get(server, "/api/v1/system/health")
    assert (status, json.loads(body)) == (200, UNHEALTHY)
    # Live but not ready (e.g. recovering).
    health.state = dict(HEALTHY, ready=False, reason="recovering")
    assert get(server, "/health/live")[0] == 200
    assert get(server, "/health/ready")[0] == 503


def test_health_callable_that_raises(exporter):
    server, health = exporter
    health.state = RuntimeError("control block unreadable")
    status, _, _, body = get(server, "/health/ready")
    assert status == 503 and "control block unreadable" in json.loads(body)["reason"]
    assert get(server, "/health/live")[0] == 503
    status, _, _, body = get(server, "/api/v1/system/health")
    assert status == 500 and "control block unreadable" in json.loads(body)["error"]


def test_unknown_path_and_method(exporter):
    server, _ = exporter
    status, ctype, _, body = get(server, "/nope")
    assert (status, ctype) == (404, "application/json")
    assert json.loads(body)["path"] == "/nope"
    assert get(server, "/metrics", method="POST")[0] == 405
    status, _, _, body = get(server, "/health/live", method="HEAD")
    assert status == 200 and body == b""


def test_shutdown_stops_serving():
    arr = MetricArray.in_memory(1, 1)
    server = serve("127.0.0.1:0", ArrayCollector(arr), lambda: HEALTHY)
    port = server.port
    assert get(server, "/health/live")[0] == 200
    server.shutdown()
    server.shutdown()  # idempotent
    with pytest.raises(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health/live")
            conn.getresponse()
        finally:
            conn.close()


@pytest.mark.parametrize("addr, expected", [
    ("127.0.0.1:9090", ("127.0.0.1", 9090)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_addr(addr, expected):
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["9090", "127.0.0.1", ":9090", "127.0.0.1:http", "h:70000"])
def test_parse_addr_rejects(addr):
    with pytest.raises(ValueError, match="listen address"):
        parse_addr(addr)
