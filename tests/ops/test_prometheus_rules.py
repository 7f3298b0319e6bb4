"""The Prometheus assets in prometheus/ are valid, tested, and agree with the code.

promtool (Debian's prometheus package; scripts/test installs it) checks the
rule files and the example configuration and runs the rule unit tests in
prometheus/tests/. The rest reads the YAML: every alert is labelled,
annotated and has a runbook in docs/operations.md; every alert has a firing
and a non-firing test case, every recording rule an expected value; every
metric the rules and tests name exists in metrics.catalog.

A missing promtool fails these tests, it never skips them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML

from metrics.catalog import BY_NAME, HISTOGRAM, PREFIX

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "prometheus"
RULE_FILES = ("alerts.yml", "recording.yml")
TEST_FILES = ("tests/alerts_test.yml", "tests/recording_test.yml")
SEVERITIES = {"warning", "critical"}
COMPONENTS = {"queues", "workers", "ingest", "recall", "exporter", "backpressure", "durability", "cluster"}
DURATION_RE = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
TOKEN_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load(rel: str) -> dict:
    return yaml.safe_load((PROM / rel).read_text())


def rules(rel: str) -> list[dict]:
    return [r for group in load(rel)["groups"] for r in group["rules"]]


ALERTS = {r["alert"]: r for r in rules("alerts.yml")}
#: Alerts on an aggregate over the hosts of a job (a cluster): no instance label.
ACROSS_HOSTS = {"PartitionUnowned"}
RECORDS = {r["record"]: r for r in rules("recording.yml")}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (scripts/test does)"
    return path


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=PROM, capture_output=True, text=True, timeout=120)


# -- promtool -----------------------------------------------------------------
def test_promtool_check_rules_passes_without_warnings(promtool):
    out = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", *RULE_FILES])
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert text.count("SUCCESS") == len(RULE_FILES), text
    assert not re.search(r"warn|duplicate", text, re.I), text


@pytest.mark.parametrize("test_file", TEST_FILES)
def test_promtool_rule_unit_tests_pass(promtool, test_file):
    out = run([promtool, "test", "rules", test_file])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_check_config_passes(promtool):
    out = run([promtool, "check", "config", "--lint=all", "--lint-fatal", "prometheus.yml"])
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert not re.search(r"warn", text, re.I), text


# -- alerts -------------------------------------------------------------------
def test_alert_set():
    assert len(ALERTS) == len(rules("alerts.yml")), "an alert name is used twice"
    assert {"HighQueueDepth", "CriticalQueueDepth", "WorkerDown", "WorkerRestartLoop",
            "WorkerUtilizationImbalance", "HighObservationLatency", "HighRecallLatency",
            "FrequentBackpressure", "PersistentBackpressure", "HighRejectionRate",
            "BatchInsertionFailures", "LowThroughput", "ExcessiveWorkStealing",
            "ExporterDown", "DataDirUnwritable", "SnapshotFailures", "PartitionUnowned", "LeaseConflicts",
            "LeaseRenewalFailures", "ApplyLagHigh", "LogUnavailable", "SnapshotUploadStale",
            "IdentityTableNearlyFull", "IdentityTableFull", "DeletedVectorsNotReclaimed"} <= set(ALERTS)


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_is_labelled_and_annotated(name):
    rule = ALERTS[name]
    assert rule["labels"].get("severity") in SEVERITIES, rule["labels"]
    assert rule["labels"].get("component") in COMPONENTS, rule["labels"]
    ann = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert str(ann.get(key, "")).strip(), f"{name}: no {key}"
    assert ann["runbook_url"] == f"docs/operations.md#{name.lower()}"
    assert DURATION_RE.match(str(rule.get("for", ""))), f"{name}: for must be a duration like 5m"


def alert_cases() -> dict[str, list[list[dict]]]:
    """alertname -> the exp_alerts list of each of its test cases."""
    cases: dict[str, list[list[dict]]] = {}
    for group in load("tests/alerts_test.yml")["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_has_firing_and_silent_cases(name):
    cases = alert_cases().get(name, [])
    assert any(cases), f"{name}: no test case where it fires"
    assert not all(cases), f"{name}: no test case where it must not fire"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_firing_cases_check_labels_and_all_annotations(name):
    rule = ALERTS[name]
    for exp_alerts in alert_cases().get(name, []):
        for alert in exp_alerts:
            labels, ann = alert.get("exp_labels", {}), alert.get("exp_annotations", {})
            assert labels.get("severity") == rule["labels"]["severity"], labels
            assert labels.get("component") == rule["labels"]["component"], labels
            assert ({"job"} if name in ACROSS_HOSTS else {"job", "instance"}) <= set(labels), labels
            assert set(ann) == {"summary", "description", "runbook_url"}, ann
            assert ann["runbook_url"] == rule["annotations"]["runbook_url"]


def test_alertnames_in_tests_exist():
    assert set(alert_cases()) <= set(ALERTS)


# -- recording rules ----------------------------------------------------------
@pytest.mark.parametrize("record", sorted(RECORDS))
def test_recording_rule_has_an_expected_value(record):
    pattern = re.compile(rf"(?<![\w:]){re.escape(record)}(?![\w:])")
    tested = [case for group in load("tests/recording_test.yml")["tests"]
              for case in group.get("promql_expr_test", []) if pattern.search(case["expr"])]
    assert tested, f"{record}: no promql_expr_test"
    assert all(case.get("exp_samples") for case in tested), f"{record}: a test expects nothing"


def test_recording_rule_names_follow_the_convention():
    for record in RECORDS:
        level, metric, ops = record.split(":")
        assert level and ops and (metric.startswith(PREFIX) or level == PREFIX.rstrip("_")), record


# -- names agree with the catalog ----------------------------------------------
def metric_names(text: str) -> set[str]:
    return {t for t in TOKEN_RE.findall(text) if t.startswith(PREFIX) and ":" not in t}


def in_catalog(full_name: str) -> bool:
    name = full_name[len(PREFIX):]
    if name in BY_NAME:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base in BY_NAME and BY_NAME[base].type == HISTOGRAM:
            return True
    return False


def all_rules() -> list[dict]:
    return [*ALERTS.values(), *RECORDS.values()]


def test_rule_expressions_name_catalog_metrics():
    names = set().union(*(metric_names(r["expr"]) for r in all_rules()))
    assert names, "no metric found in the rules"
    assert sorted(n for n in names if not in_catalog(n)) == []


def test_rule_expressions_name_existing_recording_rules():
    used = {t for r in all_rules() for t in TOKEN_RE.findall(r["expr"]) if t.count(":") == 2}
    assert used <= set(RECORDS)


@pytest.mark.parametrize("test_file", TEST_FILES)
def test_test_inputs_name_catalog_metrics(test_file):
    for group in load(test_file)["tests"]:
        for series in group["input_series"]:
            name = series["series"].split("{")[0].strip()
            assert name == "up" or in_catalog(name), f"{test_file}: {name} is not in metrics.catalog"


# -- runbooks -------------------------------------------------------------------
def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """GitHub anchor -> body of each ``###`` heading under ``## Runbooks``."""
    text = (ROOT / "docs/operations.md").read_text()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # headings only outside code
    assert "\n## Runbooks\n" in text, "docs/operations.md has no '## Runbooks' section"
    body = re.split(r"^## ", text.split("\n## Runbooks\n", 1)[1], flags=re.M)[0]
    parts = re.split(r"^### (.+)$", body, flags=re.M)
    return {github_anchor(h): b for h, b in zip(parts[1::2], parts[2::2])}


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_runbook_exists_with_symptoms_investigation_resolution(name):
    anchor = ALERTS[name]["annotations"]["runbook_url"].split("#", 1)[1]
    sections = runbook_sections()
    assert anchor in sections, f"no '### {name}' under '## Runbooks' in docs/operations.md"
    for part in ("**Symptoms.**", "**Investigation.**", "**Resolution.**"):
        assert part in sections[anchor], f"{name}: runbook has no {part}"


def test_github_anchor():
    assert github_anchor("HighQueueDepth") == "highqueuedepth"
    assert github_anchor("Worker restarts (v2)") == "worker-restarts-v2"


# -- example configurations -------------------------------------------------------
def test_prometheus_example_scrapes_the_engine():
    cfg = load("prometheus.yml")
    assert set(cfg["rule_files"]) == set(RULE_FILES)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "engram-streaming"]
    assert job["scrape_interval"] == "5s"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["127.0.0.1:9090"]
    am = [t for a in cfg["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert am == ["127.0.0.1:9093"]


def test_alertmanager_example_routes_by_severity():
    cfg = load("alertmanager.yml")
    receivers = {r["name"]: r for r in cfg["receivers"]}
    routes = {m: r["receiver"] for r in cfg["route"]["routes"] for m in r["matchers"]}
    assert set(routes) == {'severity="critical"', 'severity="warning"'}
    assert routes['severity="critical"'] != routes['severity="warning"']
    assert cfg["route"]["receiver"] in receivers and set(routes.values()) <= set(receivers)
    urls = [w["url"] for r in receivers.values() for w in r.get("webhook_configs", [])]
    assert urls and all(u.startswith("http://127.0.0.1:") for u in urls), urls
    amtool = shutil.which("amtool")
    if amtool:  # not packaged with prometheus; checked fully where installed
        out = run([amtool, "check-config", "alertmanager.yml"])
        assert out.returncode == 0, out.stdout + out.stderr
