"""The operator assets against a real Prometheus scraping a real engine.

Debian's ``prometheus`` runs on loopback, scraping a 2-worker engine every
second and evaluating the project's rules every second. The rule files are
the ones in ``prometheus/``, with every ``for:`` shortened to 2 s so a test
does not wait minutes (the ``for:`` values themselves are covered by
``promtool test rules``). Tests run in file order on one engine: mixed load
with forgets and replacements first (every panel and recording rule returns
data, compactions included), then overload (queue alerts fire), then a
killed worker (WorkerDown fires and resolves).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import yaml

from shm.segment import instance_objects
from tests.harness import ROOT, EngineProcess, free_port, observe_all, wait_for
from tests.ops.grafana_exprs import concrete, dashboard_exprs

DIM = 16


def shortened_rules(src: str, dst: str) -> None:
    with open(src) as fh:
        doc = yaml.safe_load(fh)
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    with open(dst, "w") as fh:
        yaml.safe_dump(doc, fh)


class Prometheus:
    def __init__(self, tmp, target_port: int):
        self.port = free_port()
        self.dir = tmp
        for name in ("alerts.yml", "recording.yml"):
            shortened_rules(os.path.join(ROOT, "prometheus", name), str(tmp / name))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(tmp / "alerts.yml"), str(tmp / "recording.yml")],
            "scrape_configs": [{"job_name": "engram-streaming",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def alerts(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for a in self.api("alerts")["alerts"]:
            out.setdefault(a["labels"]["alertname"], set()).add(a["state"])
        return out

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom")
    ep = EngineProcess(tmp, capacity_high=200, capacity_normal=2000, capacity_low=200,
                       flap_restarts=1, park_seconds=6, steal_threshold=300)
    prom = None
    try:
        ep.start()
        port = ep.exporter_port()
        prom = Prometheus(tmp, port)
        wait_for(lambda: prom.query('up{job="engram-streaming"} == 1'), 60, interval=0.2,
                 message="prometheus scraping the engine")
        yield ep, prom
    finally:
        if prom is not None:
            prom.stop()
        ep.terminate(30)
        ep.cleanup()
        assert not instance_objects(ep.name)


def mixed_load(ep, seconds: float = 4.0) -> None:
    eng = ep.engine()
    rng = np.random.default_rng(20)
    start, n = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        for space, prio in (("panel-a", "high"), ("panel-b", "normal"), ("panel-c", "low")):
            observe_all(eng, space, np.arange(n, n + 50), rng.standard_normal((50, DIM)).astype(np.float32),
                        priority=prio)
            n += 50
        # Forget and upsert in panel-a: its observations share the high lane
        # with forgets, so each is inserted before the later forget of it and
        # leaves a dead vector (a forget that overtook its observe would leave
        # nothing to compact). 20 of each 50 ids forgotten, 10 observed again:
        # its shards get compacted.
        eng.forget("panel-a", np.arange(n - 150, n - 130), wait=False)
        observe_all(eng, "panel-a", np.arange(n - 130, n - 120), rng.standard_normal((10, DIM)).astype(np.float32),
                    priority="high")
        eng.recall("panel-a", rng.standard_normal((2, DIM)).astype(np.float32), k=3)
        try:
            eng.observe("panel-a", [1], np.full((1, DIM), np.nan, np.float32))
        except ValueError:
            pass
        time.sleep(0.05)


def test_every_panel_and_recording_rule_returns_data(stack):
    ep, prom = stack
    mixed_load(ep)
    with open(os.path.join(ROOT, "prometheus", "recording.yml")) as fh:
        records = [r["record"] for g in yaml.safe_load(fh)["groups"] for r in g["rules"]]
    # The Cluster row's series exist only on hosts in cluster mode, and this
    # stack is a single host: those panels are checked against the catalog
    # (test_grafana_dashboard) and their metrics on a real cluster host
    # (tests/integration/test_cluster_metrics.py).
    exprs = [(title, concrete(expr)) for title, expr in dashboard_exprs(os.path.join(ROOT, "grafana/streaming.json"))
             if "engram_streaming_cluster_" not in expr]
    assert exprs and records

    def all_have_data():
        empty = [f"panel {t!r}: {e}" for t, e in exprs if not prom.query(e)]
        empty += [f"recording rule {r}" for r in records if not prom.query(r)]
        assert not empty or time.monotonic() < deadline, "no data for:\n" + "\n".join(empty)
        return not empty
    deadline = time.monotonic() + 40
    wait_for(all_have_data, 60, interval=1.0, message="every expression returns data")
    # The Forget and upsert row shows the forgets, and the compactions they caused.
    for expr in ('sum(engram_streaming_forgets_total{memory_space="panel-a"}) > 0',
                 'sum(engram_streaming_compactions_total) > 0',
                 'sum(engram_streaming_compaction_duration_seconds_count) > 0'):
        wait_for(lambda e=expr: prom.query(e), 30, interval=1.0, message=expr)


def test_overload_fires_queue_alerts(stack):
    ep, prom = stack
    eng = ep.engine()
    pids = [w["pid"] for w in ep.status()["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        rng = np.random.default_rng(21)
        n = 10 ** 6
        # low first: it is refused from critical on, so it must go in early.
        for prio in ("low", "high", "normal"):
            for _ in range(60):
                ack = eng.observe("flood", np.arange(n, n + 100), rng.standard_normal((100, DIM)).astype(np.float32),
                                  priority=prio)
                n += 100
                if ack.accepted < 100:
                    break
        assert ep.status()["backpressure"] == "overloaded"
        wait_for(lambda: "firing" in prom.alerts().get("CriticalQueueDepth", set()), 60, interval=0.5,
                 message="CriticalQueueDepth firing")
        assert "firing" in prom.alerts().get("HighQueueDepth", set())
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "CriticalQueueDepth" not in prom.alerts(), 60, interval=0.5,
             message="CriticalQueueDepth resolved after the drain")


def test_killed_worker_fires_worker_down_then_resolves(stack):
    ep, prom = stack
    victim = ep.status()["workers"][1]
    os.kill(victim["pid"], signal.SIGKILL)  # --flap-restarts 1: parked for 6 s, then restarted
    wait_for(lambda: "firing" in prom.alerts().get("WorkerDown", set()), 60, interval=0.5,
             message="WorkerDown firing")
    firing = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "WorkerDown"]
    assert {a["labels"].get("worker_id") for a in firing} == {"1"}
    wait_for(lambda: "WorkerDown" not in prom.alerts(), 60, interval=0.5, message="WorkerDown resolved")
    assert ep.status()["workers"][1]["restarts"] == 1
    assert prom.query('engram_streaming_worker_restarts_total{worker_id="1",reason="signal"} == 1')
