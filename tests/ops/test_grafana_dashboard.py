"""The Grafana dashboard (grafana/streaming.json) is importable and its PromQL is sound.

Static checks only; no Grafana or Prometheus runs here (a live evaluation of
every expression belongs to the Prometheus tests, through
``grafana_exprs.concrete``). What is checked:

* the JSON loads, has the dashboard's identity, refresh and time range;
* every panel and target queries ``${datasource}`` (a template variable of
  type datasource), so the dashboard imports into any Grafana;
* every rate window is ``[$__rate_interval]`` (rates *and* increases: one
  rule, so panels stay comparable and follow the scrape interval);
* every ``histogram_quantile`` aggregates with ``sum by (... le ...)``;
* every metric name exists in ``metrics.catalog`` (histogram suffixes
  allowed on histograms only), every selector filters on ``$instance``, every
  matcher and ``by`` label belongs to a metric of the expression;
* ``promtool check rules`` parses every expression once made concrete;
* each operator topic has a panel, every panel has a description, refIds are
  unique and legends set, and the thresholds the runbooks refer to are there;
* docs/dashboard.md describes every row and panel.

The checkers return lists of problems; the ``test_checker_rejects_*`` tests
feed them broken expressions so that they are known to be able to fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from metrics.catalog import CATALOG, DOMAINS, HISTOGRAM, PREFIX
from tests.ops.grafana_exprs import DASHBOARD, concrete, dashboard_exprs, iter_panels

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE_WINDOW = "[$__rate_interval]"
INSTANCE_MATCHER = 'instance=~"$instance"'
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
#: Labels Prometheus adds at scrape time, usable on every metric.
TARGET_LABELS = {"instance", "job"}

BY_NAME = {m.full_name: m for m in CATALOG}
_METRIC = re.compile(PREFIX + r"[a-z_]+")
_SELECTOR = re.compile(r"(" + PREFIX + r"[a-z_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*$')
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SUM_BY = re.compile(r"^sum\s+by\s*\(([^)]*)\)\s*\((.*)\)$", re.S)


# -- helpers -------------------------------------------------------------------

def load() -> dict:
    return json.loads(Path(DASHBOARD).read_text())


def panels(dashboard: dict) -> list[dict]:
    """Panels that show data (rows are layout only)."""
    return [p for p in iter_panels(dashboard) if p.get("type") != "row"]


def call_args(expr: str, func: str) -> list[str]:
    """The argument text of every call of ``func`` in ``expr`` (balanced parentheses)."""
    out = []
    for m in re.finditer(r"(?<![a-zA-Z0-9_])" + re.escape(func) + r"\s*\(", expr):
        depth, start = 1, m.end()
        for i in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            if depth == 0:
                out.append(expr[start:i])
                break
        else:
            out.append(expr[start:])  # unbalanced: let the caller see the rest
    return out


def split_top_level(args: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in args:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def base_metric(name: str):
    """The catalog metric ``name`` refers to (histogram series included), or None."""
    if name in BY_NAME:
        return BY_NAME[name]
    for suffix in HIST_SUFFIXES:
        if name.endswith(suffix):
            m = BY_NAME.get(name[: -len(suffix)])
            if m is not None and m.type == HISTOGRAM:
                return m
    return None


def metrics_of(expr: str) -> set[str]:
    """Catalog names (with prefix, without histogram suffixes) used by ``expr``."""
    return {m.full_name for m in map(base_metric, _METRIC.findall(expr)) if m}


def by_labels(expr: str) -> set[str]:
    return {lab.strip() for group in _BY.findall(expr) for lab in group.split(",") if lab.strip()}


# -- checkers: each returns a list of problems (empty = fine) -------------------

def rate_window_problems(expr: str) -> list[str]:
    problems = []
    n_calls = 0
    for func in ("rate", "irate", "increase"):
        for args in call_args(expr, func):
            n_calls += 1
            if not args.rstrip().endswith(RATE_WINDOW):
                problems.append(f"{func}({args}) does not use {RATE_WINDOW}")
    windows = re.findall(r"\[[^\]]*\]", expr)
    problems += [f"range {w} is not {RATE_WINDOW}" for w in windows if w != RATE_WINDOW]
    if len(windows) != n_calls:
        problems.append(f"{len(windows)} range selectors for {n_calls} rate/increase calls")
    if re.search(r"\$__(?!rate_interval\b)", expr):
        problems.append("Grafana macro other than $__rate_interval")
    return problems


def quantile_problems(expr: str) -> list[str]:
    problems = []
    for args in call_args(expr, "histogram_quantile"):
        parts = split_top_level(args)
        if len(parts) != 2:
            problems.append(f"histogram_quantile({args}): expected 2 arguments")
            continue
        m = _SUM_BY.match(parts[1].strip())
        if not m:
            problems.append(f"histogram_quantile({args}): not aggregated with sum by (...)")
            continue
        labels = {lab.strip() for lab in m.group(1).split(",")}
        if "le" not in labels:
            problems.append(f"histogram_quantile({args}): sum by ({m.group(1)}) drops le")
        if not re.search(r"_bucket\b", m.group(2)):
            problems.append(f"histogram_quantile({args}): no _bucket series")
    return problems


def metric_problems(expr: str) -> list[str]:
    names = _METRIC.findall(expr)
    problems = [f"{n} is not in metrics.catalog" for n in names if base_metric(n) is None]
    if not names:
        problems.append("no engram_streaming_ metric")
    return problems


def selector_problems(expr: str) -> list[str]:
    problems = []
    for name, braces in _SELECTOR.findall(expr):
        metric = base_metric(name)
        if metric is None:
            continue  # metric_problems reports it
        matchers = [s for s in (braces[1:-1].split(",") if braces else []) if s.strip()]
        if INSTANCE_MATCHER not in (s.strip() for s in matchers):
            problems.append(f"{name}: no {INSTANCE_MATCHER} matcher")
        allowed = set(metric.labels) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for s in matchers:
            m = _MATCHER.match(s)
            if not m:
                problems.append(f"{name}: cannot read matcher {s!r}")
                continue
            label, op, value = m.groups()
            if label not in allowed:
                problems.append(f"{name}: no label {label!r}")
            elif label in metric.labels and op in ("=", "!="):
                values = DOMAINS.get(metric.domain_of(label))
                if values is not None and value not in values:
                    problems.append(f"{name}: {label}={value!r} is not in {values}")
    return problems


def grouping_problems(expr: str) -> list[str]:
    allowed = set(TARGET_LABELS)
    for name in _METRIC.findall(expr):
        metric = base_metric(name)
        if metric is not None:
            allowed |= set(metric.labels)
        if name.endswith("_bucket"):
            allowed.add("le")
    return [f"grouping label {lab!r} belongs to no metric of the expression"
            for lab in sorted(by_labels(expr) - allowed)]


CHECKERS = (rate_window_problems, quantile_problems, metric_problems, selector_problems,
            grouping_problems)


def all_problems(expr: str) -> list[str]:
    return [p for check in CHECKERS for p in check(expr)]


# -- the checkers can fail -------------------------------------------------------

_OBS = 'engram_streaming_observations_total{instance=~"$instance"}'
_LAT = 'engram_streaming_observation_latency_seconds_bucket{instance=~"$instance"}'


@pytest.mark.parametrize("checker, expr", [
    (rate_window_problems, f"sum(rate({_OBS}[5m]))"),
    (rate_window_problems, f"sum(increase({_OBS}[1h]))"),
    (rate_window_problems, f"sum(irate({_OBS}[$__interval]))"),
    (rate_window_problems, f"max_over_time({_OBS}[10m])"),
    (rate_window_problems, f"sum(rate({_OBS}[$__rate_interval])) * $__interval_ms"),
    (quantile_problems, f"histogram_quantile(0.99, rate({_LAT}[$__rate_interval]))"),
    (quantile_problems,
     f"histogram_quantile(0.99, sum by (memory_space) (rate({_LAT}[$__rate_interval])))"),
    (quantile_problems,
     f"histogram_quantile(0.99, sum(rate({_LAT}[$__rate_interval])))"),
    (metric_problems, 'engram_streaming_no_such_metric{instance=~"$instance"}'),
    (metric_problems, 'engram_streaming_queue_depth_bucket{instance=~"$instance"}'),
    (metric_problems, "vector(1)"),
    (selector_problems, "sum(engram_streaming_queue_depth)"),
    (selector_problems, 'engram_streaming_queue_depth{instance="$instance"}'),
    (selector_problems,
     'engram_streaming_backpressure_activations_total{instance=~"$instance", level="panic"}'),
    (selector_problems, 'engram_streaming_queue_depth{instance=~"$instance", worker_id="0"}'),
    (grouping_problems, 'sum by (reason) (engram_streaming_queue_depth{instance=~"$instance"})'),
])
def test_checker_rejects_broken_expression(checker, expr):
    assert checker(expr), f"{checker.__name__} accepted {expr!r}"


def test_checkers_accept_a_sound_expression():
    expr = (f'histogram_quantile(0.99, sum by (le, memory_space) (rate({_LAT}[$__rate_interval])))'
            f' / sum(rate({_OBS}[$__rate_interval]))')
    assert all_problems(expr) == []


# -- the dashboard ---------------------------------------------------------------

def test_is_valid_json_with_identity_refresh_and_time_range():
    d = load()
    assert d["uid"] == "engram-streaming"
    assert d["title"] == "engram-streaming"
    assert 36 <= d["schemaVersion"] <= 41
    assert d["refresh"] == "5s"
    assert "5s" in d["timepicker"]["refresh_intervals"]
    assert d["time"] == {"from": "now-30m", "to": "now"}
    assert d["id"] is None, "an exported id would clash on import"


def test_datasource_variable_is_used_by_every_panel_and_target():
    d = load()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    wrong = []
    for p in panels(d):
        if p.get("datasource") != DS:
            wrong.append(f"panel {p['title']!r}: {p.get('datasource')}")
        for t in p.get("targets", []):
            if t.get("datasource") != DS:
                wrong.append(f"panel {p['title']!r} target {t.get('refId')}: {t.get('datasource')}")
    for v in d["templating"]["list"]:
        if v["type"] == "query" and v.get("datasource") != DS:
            wrong.append(f"variable {v['name']}: {v.get('datasource')}")
    assert not wrong, wrong


def test_instance_variable_selects_all_with_a_regex():
    v = {v["name"]: v for v in load()["templating"]["list"]}["instance"]
    assert v["type"] == "query"
    assert v["definition"] == "label_values(engram_streaming_worker_up, instance)"
    assert v["query"]["query"] == v["definition"]
    assert v["includeAll"] and v["allValue"] == ".*"


def test_every_panel_has_targets_with_unique_refids_and_legends():
    bad = []
    for p in panels(load()):
        targets = p.get("targets", [])
        refs = [t.get("refId") for t in targets]
        if not targets:
            bad.append(f"{p['title']!r}: no targets")
        if len(set(refs)) != len(refs) or not all(refs):
            bad.append(f"{p['title']!r}: refIds {refs}")
        bad += [f"{p['title']!r} {t.get('refId')}: no legendFormat"
                for t in targets if not t.get("legendFormat", "").strip()]
        bad += [f"{p['title']!r} {t.get('refId')}: no expr"
                for t in targets if not t.get("expr", "").strip()]
    assert not bad, bad


def test_every_panel_has_a_description_and_a_title():
    bad = [p.get("title") or f"id {p.get('id')}" for p in panels(load())
           if not p.get("description", "").strip() or not p.get("title", "").strip()]
    assert not bad, bad


def test_panel_ids_are_unique():
    ids = [p.get("id") for p in iter_panels(load())]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), ids


def test_panels_fit_the_grid_without_overlapping():
    boxes = [(p["title"], p["gridPos"]) for p in iter_panels(load())]
    cells: dict[tuple[int, int], str] = {}
    clashes = []
    for title, g in boxes:
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (title, g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    clashes.append((title, cells[(x, y)]))
                cells[(x, y)] = title
    assert not clashes, sorted(set(clashes))


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_every_expression_passes(checker):
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    bad = [(title, expr, problem) for title, expr in exprs for problem in checker(expr)]
    assert not bad, "\n".join(f"{t}: {p}\n    {e}" for t, e, p in bad)


def test_helper_lists_every_target():
    n_targets = sum(len(p.get("targets", [])) for p in panels(load()))
    assert len(dashboard_exprs()) == n_targets
    assert len(dashboard_exprs(DASHBOARD)) == n_targets


def test_concrete_substitutes_the_variables_and_refuses_others():
    expr = 'sum(rate(engram_streaming_observations_total{instance=~"$instance"}[$__rate_interval]))'
    assert concrete(expr) == 'sum(rate(engram_streaming_observations_total{instance=~".*"}[15s]))'
    assert concrete(expr, rate_window="1m").endswith("[1m]))")
    assert concrete('x{instance=~"${instance}"}') == 'x{instance=~".*"}'
    assert concrete('x{instance=~"${instance:regex}"}') == 'x{instance=~".*"}'
    for bad in ("rate(x[$__interval])", 'x{job="$job"}', "x * $__range_s"):
        with pytest.raises(ValueError):
            concrete(bad)
    assert all("$" not in concrete(e) for _, e in dashboard_exprs())


# -- promtool parses every expression ------------------------------------------------

def _promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(path).exists(), "promtool is missing: install Debian's prometheus (scripts/test does)"
    return path


def _check_rules(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess:
    rules = {"groups": [{"name": "grafana_streaming_dashboard", "rules": [
        {"record": f"grafana:dashboard_expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules, indent=1))  # JSON is YAML: no quoting to get wrong
    return subprocess.run([_promtool(), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_promtool_parses_every_expression(tmp_path):
    exprs = [concrete(e) for _, e in dashboard_exprs()]
    out = _check_rules(tmp_path, exprs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(exprs)} rules found" in out.stdout, out.stdout


def test_promtool_check_fails_on_a_broken_expression(tmp_path):
    out = _check_rules(tmp_path, ["sum by (le (rate(engram_streaming_observations_total[15s]))"])
    assert out.returncode != 0, out.stdout


# -- every operator topic has a panel ------------------------------------------------

def _panel_info(p: dict) -> dict:
    exprs = [t.get("expr", "") for t in p.get("targets", [])]
    joined = "\n".join(exprs)
    return {"type": p["type"], "exprs": exprs, "metrics": metrics_of(joined),
            "by": by_labels(joined), "text": joined, "panel": p}


def _uses(info, *names, by=(), types=None, text=()):
    return (all(PREFIX + n in info["metrics"] for n in names)
            and set(by) <= info["by"]
            and (types is None or info["type"] in types)
            and all(t in info["text"] for t in text))


def _quantiles(info, metric, *qs):
    found = {split_top_level(a)[0].strip() for a in call_args(info["text"], "histogram_quantile")
             if PREFIX + metric + "_bucket" in a}
    return {str(q) for q in qs} <= found


TOPICS = {
    "overview: observations/s": lambda i: _uses(i, "observations_total", types={"stat"}),
    "overview: total queue depth":
        lambda i: _uses(i, "queue_depth", types={"stat", "gauge"}) and not i["by"],
    "overview: active sessions": lambda i: _uses(i, "active_sessions", types={"stat"}),
    "overview: backpressure state": lambda i: _uses(i, "backpressure_state", types={"stat"}),
    "observation rate by memory_space":
        lambda i: _uses(i, "observations_total", by=["memory_space"], text=["rate("]),
    "queue depth by priority against capacity":
        lambda i: _uses(i, "queue_depth", "queue_capacity", by=["priority"]),
    "worker utilisation per worker":
        lambda i: _uses(i, "worker_utilization_ratio", by=["worker_id"],
                        types={"bargauge", "heatmap"}),
    "observation latency P50/P99/P99.9":
        lambda i: _quantiles(i, "observation_latency_seconds", 0.5, 0.99, 0.999),
    "backpressure state timeline":
        lambda i: _uses(i, "backpressure_state", types={"state-timeline"}),
    "backpressure transitions by level":
        lambda i: _uses(i, "backpressure_activations_total", by=["level"], text=["increase("]),
    "recall latency P99": lambda i: _quantiles(i, "recall_latency_seconds", 0.99),
    "batches per worker": lambda i: _uses(i, "batches_processed_total", by=["worker_id"]),
    "stolen work": lambda i: _uses(i, "work_stolen_total"),
    "batch size distribution":
        lambda i: (_uses(i, "batch_size", by=["le"], types={"heatmap"})
                   or _quantiles(i, "batch_size", 0.5, 0.99)),
    "rejections by reason": lambda i: _uses(i, "observations_rejected_total", by=["reason"]),
    "batch failures by error_type": lambda i: _uses(i, "batch_failures_total", by=["error_type"]),
    "worker up": lambda i: _uses(i, "worker_up"),
    "worker restarts by reason": lambda i: _uses(i, "worker_restarts_total", by=["reason"]),
    "write-ahead log size per worker": lambda i: _uses(i, "wal_size_bytes", by=["worker_id"]),
    "snapshots by result": lambda i: _uses(i, "snapshots_total", by=["result"]),
    "data directory unwritable": lambda i: _uses(i, "data_dir_unwritable"),
    "recall probe state per slot":
        lambda i: _uses(i, "recall_probe_state", by=["worker_id"], types={"state-timeline"}),
    "recall probe latency P99": lambda i: _quantiles(i, "recall_probe_latency_seconds", 0.99),
    "recall probe failures by reason":
        lambda i: _uses(i, "recall_probe_failures_total", by=["worker_id", "reason"]),
    "recall breaker state per slot":
        lambda i: _uses(i, "recall_breaker_state", by=["worker_id"], types={"state-timeline"}),
    "recall requests short-circuited":
        lambda i: _uses(i, "recall_breaker_short_circuits_total", by=["worker_id"]),
    "auto-tuner changes by setting": lambda i: _uses(i, "autotune_changes_total", by=["setting"]),
    "forgets by memory_space":
        lambda i: _uses(i, "forgets_total", by=["memory_space"], text=["rate("]),
    "live vs deleted vectors by memory_space":
        lambda i: _uses(i, "index_vectors", "index_deleted_vectors", by=["memory_space"]),
    "compactions and their duration P50/P99":
        lambda i: (_uses(i, "compactions_total", by=["memory_space"])
                   and _quantiles(i, "compaction_duration_seconds", 0.5, 0.99)),
    "bytes reclaimed by compaction":
        lambda i: _uses(i, "compaction_reclaimed_bytes_total", text=["rate("]),
    "identity table use with tombstones dropped":
        lambda i: _uses(i, "identity_table_entries", "identity_table_capacity", "tombstones_dropped_total",
                        text=["rate("]),
    "cluster: partitions held per host": lambda i: _uses(i, "cluster_partitions_owned", by=["instance"]),
    "cluster: partitions without an owner":
        lambda i: _uses(i, "cluster_partition_epoch", by=["partition"], types={"stat"}),
    "cluster: NATS connections":
        lambda i: _uses(i, "cluster_log_connected", by=["client"], types={"state-timeline"}),
    "cluster: apply lag": lambda i: _uses(i, "cluster_apply_lag_messages"),
    "cluster: publish latency P50/P99": lambda i: _quantiles(i, "cluster_publish_latency_seconds", 0.5, 0.99),
    "cluster: publish failures": lambda i: _uses(i, "cluster_publish_failures_total"),
    "cluster: forget confirmation P50/P99, and unconfirmed":
        lambda i: (_quantiles(i, "cluster_forget_confirm_seconds", 0.5, 0.99)
                   and _uses(i, "cluster_forget_confirm_seconds", text=['result="unconfirmed"'])),
    "cluster: lease renewals by result": lambda i: _uses(i, "cluster_lease_renewals_total", by=["result"]),
    "cluster: lease conflicts and failovers":
        lambda i: _uses(i, "cluster_lease_conflicts_total", "cluster_failovers_total"),
    "cluster: snapshot uploads by result": lambda i: _uses(i, "cluster_snapshot_uploads_total", by=["result"]),
    "cluster: time since the last snapshot upload":
        lambda i: _uses(i, "cluster_snapshot_last_upload_timestamp_seconds", text=["time()"]),
}


@pytest.mark.parametrize("topic", TOPICS)
def test_topic_has_a_panel(topic):
    infos = [_panel_info(p) for p in panels(load())]
    assert any(TOPICS[topic](i) for i in infos), f"no panel shows {topic}"


# -- thresholds and mappings the runbooks refer to --------------------------------------

def _steps(p: dict) -> list[tuple[float | None, str]]:
    th = p["fieldConfig"]["defaults"].get("thresholds", {"steps": []})
    return [(s["value"], s["color"]) for s in th["steps"]]


def _mapping_texts(p: dict) -> dict[str, str]:
    out = {}
    for m in p["fieldConfig"]["defaults"].get("mappings", []):
        if m.get("type") == "value":
            out.update({k: v.get("text") for k, v in m["options"].items()})
    return out


def test_backpressure_state_panels_map_levels_and_colour_them():
    shown = [p for p in panels(load()) if PREFIX + "backpressure_state" in metrics_of(
        "\n".join(t["expr"] for t in p["targets"]))]
    assert {p["type"] for p in shown} >= {"stat", "state-timeline"}
    levels = DOMAINS["level"]
    for p in shown:
        assert _mapping_texts(p) == {str(i): lvl for i, lvl in enumerate(levels)}, p["title"]
        colours = [v.get("color") for m in p["fieldConfig"]["defaults"]["mappings"]
                   for v in m["options"].values()]
        assert len(set(colours)) == len(levels) and None not in colours, p["title"]
        assert [v for v, _ in _steps(p)] == [None, 1, 2, 3], p["title"]


def test_queue_utilisation_panels_warn_at_80_and_go_critical_at_90_percent():
    util = [p for p in panels(load())
            if any(re.search(r"queue_depth\{[^}]*\}\)?\s*/\s*sum.*queue_capacity", t["expr"])
                   for t in p["targets"])]
    assert util, "no queue utilisation panel"
    for p in util:
        values = [v for v, _ in _steps(p)]
        assert values == [None, 0.8, 0.9], (p["title"], values)
        assert p["fieldConfig"]["defaults"]["unit"] == "percentunit", p["title"]


def test_latency_p99_panels_mark_100_ms():
    lat = [p for p in panels(load())
           if any(re.search(r"histogram_quantile\(0\.99,.*_latency_seconds_bucket", t["expr"])
                  for t in p["targets"])]
    assert len(lat) >= 2
    for p in lat:
        assert 0.1 in [v for v, _ in _steps(p)], p["title"]
        assert p["fieldConfig"]["defaults"]["unit"] == "s", p["title"]


def test_recall_health_state_panels_name_every_state():
    def shown(metric):
        return [p for p in panels(load()) if PREFIX + metric in metrics_of(
            "\n".join(t["expr"] for t in p["targets"]))]

    probe, breaker = shown("recall_probe_state"), shown("recall_breaker_state")
    assert probe and breaker
    for p in probe:  # the catalog's help: 0 unknown, 1 healthy, 2 degraded, 3 unhealthy
        assert _mapping_texts(p) == {"0": "unknown", "1": "healthy", "2": "degraded", "3": "unhealthy"}
    for p in breaker:  # 0 closed, 1 half-open, 2 open
        assert _mapping_texts(p) == {"0": "closed", "1": "half-open", "2": "open"}


def test_worker_utilisation_panels_are_coloured_on_a_0_to_1_scale():
    util = [p for p in panels(load())
            if any("worker_utilization_ratio" in t["expr"] for t in p["targets"])]
    assert util
    for p in util:
        d = p["fieldConfig"]["defaults"]
        assert (d.get("min"), d.get("max"), d.get("unit")) == (0, 1, "percentunit"), p["title"]
        assert len(_steps(p)) >= 3, p["title"]


def _shown(metric: str) -> list[dict]:
    return [p for p in panels(load()) if PREFIX + metric in metrics_of(
        "\n".join(t["expr"] for t in p["targets"]))]


def test_forget_panels_mark_the_alert_thresholds():
    # DeletedVectorsNotReclaimed at 50 %, with the default --compact-ratio (0.2) below it;
    # IdentityTableNearlyFull at 90 % and IdentityTableFull at 100 % of the table's room.
    share = [p for p in _shown("index_deleted_vectors") if p["fieldConfig"]["defaults"]["unit"] == "percentunit"]
    assert share, "no deleted share panel"
    for p in share:
        assert [v for v, _ in _steps(p)] == [None, 0.2, 0.5], p["title"]
    table = _shown("identity_table_entries")
    assert table
    for p in table:
        assert [v for v, _ in _steps(p)] == [None, 0.9, 1], p["title"]
        assert p["fieldConfig"]["defaults"]["unit"] == "percentunit", p["title"]
        # The line the alerts use: keys tracked plus the room kept for the rings.
        assert any(PREFIX + "queue_capacity" in t["expr"] for t in p["targets"]), p["title"]


# -- docs/dashboard.md documents every row and panel ------------------------------------

def test_every_row_and_panel_is_documented():
    doc = (Path(DASHBOARD).parents[1] / "docs" / "dashboard.md").read_text()
    missing = []
    for p in iter_panels(load()):
        title = p["title"]
        if p["type"] == "row":
            found = f"\n## {title}\n" in doc
        else:  # a bold paragraph lead, or a row of the Overview table
            found = f"**{title}**" in doc or f"\n| {title} |" in doc
        if not found:
            missing.append(f"{p['type']} {title!r}")
    assert not missing, f"not in docs/dashboard.md: {missing}"
