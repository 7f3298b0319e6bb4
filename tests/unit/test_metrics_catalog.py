"""The metric catalog and the cell map derived from it."""

import dataclasses

import pytest

from metrics import catalog as cat
from metrics.cells import CellMap
from metrics.errors import CatalogError, LabelError, UnknownMetric

# DESIGN §9 plus the durability metrics: name -> (type, labels, buckets)
EXPECTED = {
    "observations_total": ("counter", ("memory_space", "priority"), ()),
    "observations_rejected_total": ("counter", ("memory_space", "reason"), ()),
    "backpressure_activations_total": ("counter", ("level",), ()),
    "batches_processed_total": ("counter", ("worker_id",), ()),
    "batch_failures_total": ("counter", ("worker_id", "error_type"), ()),
    "work_stolen_total": ("counter", ("worker_id",), ()),
    "worker_restarts_total": ("counter", ("worker_id", "reason"), ()),
    "queue_depth": ("gauge", ("priority",), ()),
    "queue_capacity": ("gauge", ("priority",), ()),
    "worker_utilization_ratio": ("gauge", ("worker_id",), ()),
    "worker_up": ("gauge", ("worker_id",), ()),
    "active_sessions": ("gauge", (), ()),
    "sessions_total": ("counter", ("event",), ()),
    "backpressure_state": ("gauge", (), ()),
    "queue_memory_bytes": ("gauge", (), ()),
    "index_vectors": ("gauge", ("memory_space",), ()),
    # forget and upsert
    "forgets_total": ("counter", ("memory_space",), ()),
    "index_deleted_vectors": ("gauge", ("memory_space",), ()),
    "compactions_total": ("counter", ("memory_space",), ()),
    "compaction_duration_seconds": ("histogram", (), (.01, .05, .1, .5, 1, 5, 10, 30, 60, 300)),
    "compaction_reclaimed_bytes_total": ("counter", ("memory_space",), ()),
    "identity_table_entries": ("gauge", (), ()),
    "identity_table_capacity": ("gauge", (), ()),
    "tombstones_dropped_total": ("counter", (), ()),
    "observation_latency_seconds": ("histogram", ("memory_space",),
                                    (.001, .005, .01, .05, .1, .5, 1, 5)),
    "recall_latency_seconds": ("histogram", ("memory_space",), (.001, .005, .01, .02, .05, .1, .5)),
    "batch_size": ("histogram", ("worker_id",), (1, 10, 50, 100, 250, 500, 1000)),
    "queue_wait_time_seconds": ("histogram", ("priority",), (.001, .005, .01, .05, .1, .5, 1)),
    "recall_queries_total": ("counter", ("memory_space",), ()),
    "wal_appends_total": ("counter", ("worker_id",), ()),
    "wal_bytes_total": ("counter", ("worker_id",), ()),
    "wal_fsync_seconds": ("histogram", (), (.0001, .0005, .001, .005, .01, .05, .1, .5)),
    "wal_size_bytes": ("gauge", ("worker_id",), ()),
    "wal_records_recovered_total": ("counter", ("worker_id",), ()),
    "wal_bytes_dropped_total": ("counter", ("worker_id",), ()),
    "deadletter_batches_total": ("counter", ("worker_id",), ()),
    "wal_truncations_total": ("counter", ("worker_id",), ()),
    "wal_records_skipped_total": ("counter", ("worker_id", "reason"), ()),
    "wal_bytes_skipped_total": ("counter", ("worker_id", "reason"), ()),
    "wal_records_dropped_total": ("counter", ("worker_id",), ()),
    "exporter_rejected_connections_total": ("counter", ("reason",), ()),
    "snapshot_shards_skipped_total": ("counter", ("worker_id",), ()),
    "snapshots_total": ("counter", ("worker_id", "result"), ()),
    "snapshot_duration_seconds": ("histogram", (), (.01, .05, .1, .5, 1, 5, 10, 30, 60, 300)),
    "snapshot_last_success_timestamp_seconds": ("gauge", ("worker_id",), ()),
    "snapshot_fallbacks_total": ("counter", ("worker_id",), ()),
    "data_dir_unwritable": ("gauge", ("worker_id",), ()),
    "recall_probe_latency_seconds": ("histogram", ("worker_id",), (.001, .005, .01, .025, .05, .1, .25, .5)),
    "recall_probe_failures_total": ("counter", ("worker_id", "reason"), ()),
    "recall_probe_state": ("gauge", ("worker_id",), ()),
    "recall_breaker_state": ("gauge", ("worker_id",), ()),
    "recall_breaker_transitions_total": ("counter", ("worker_id", "from", "to"), ()),
    "recall_breaker_short_circuits_total": ("counter", ("worker_id",), ()),
    "autotune_changes_total": ("counter", ("setting",), ()),
    "cluster_lease_acquisitions_total": ("counter", ("result",), ()),
    "cluster_lease_renewals_total": ("counter", ("result",), ()),
    "cluster_lease_conflicts_total": ("counter", (), ()),
    "cluster_failovers_total": ("counter", (), ()),
    "cluster_partition_epoch": ("gauge", ("partition",), ()),
    "cluster_partitions_owned": ("gauge", (), ()),
    "cluster_apply_lag_messages": ("gauge", (), ()),
    "cluster_publish_latency_seconds": ("histogram", (), (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                                          2.5, 5)),
    "cluster_publish_failures_total": ("counter", (), ()),
    "cluster_forget_confirm_seconds": ("histogram", ("result",), (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
                                                                  10, 30)),
    "cluster_snapshot_uploads_total": ("counter", ("result",), ()),
    "cluster_snapshot_last_upload_timestamp_seconds": ("gauge", (), ()),
    "cluster_log_connected": ("gauge", ("client",), ()),
}


def test_catalog_matches_design():
    got = {m.name: (m.type, m.labels, m.buckets) for m in cat.CATALOG}
    assert got == {k: (t, labels, tuple(float(b) for b in b_)) for k, (t, labels, b_) in EXPECTED.items()}


def test_live_gauges_are_the_queue_and_recall_health_gauges():
    live = {m.name for m in cat.CATALOG if m.source == cat.LIVE}
    assert live == {"queue_depth", "queue_capacity", "queue_memory_bytes", "backpressure_state",
                    "active_sessions", "recall_probe_state", "recall_breaker_state",
                    "cluster_partition_epoch", "cluster_partitions_owned", "cluster_apply_lag_messages"}


def test_label_domains():
    assert cat.DOMAINS["priority"] == ("high", "normal", "low")
    assert cat.DOMAINS["rejection_reason"] == ("over_capacity", "invalid_sequence", "duplicate",
                                               "invalid_input")
    assert cat.DOMAINS["level"] == ("normal", "warning", "critical", "overloaded")
    assert cat.DOMAINS["error_type"] == ("insert_error", "resize_error", "wal_error", "other")
    assert cat.DOMAINS["restart_reason"] == ("crash", "hung", "signal")
    assert cat.DOMAINS["event"] == ("opened", "resumed", "closed", "expired", "evicted")
    assert cat.BY_NAME["worker_restarts_total"].domain_of("reason") == "restart_reason"
    assert cat.BY_NAME["observations_rejected_total"].domain_of("reason") == "rejection_reason"


def test_names_follow_conventions():
    for m in cat.CATALOG:
        assert m.full_name == "engram_streaming_" + m.name
        assert (m.type == "counter") == m.name.endswith("_total"), m.name


def _bad(**changes):
    base = cat.BY_NAME["observations_total"]
    return (dataclasses.replace(base, **changes),)


@pytest.mark.parametrize("changes, message", [
    (dict(name="observations"), "_total"),
    (dict(type="gauge"), "_total"),
    (dict(agg="max"), "aggregation"),
    (dict(source="live"), "source"),
    (dict(help=" "), "help"),
    (dict(labels=("memory_space", "colour")), "colour"),
    (dict(buckets=(1.0,)), "buckets"),
    (dict(name="Observations_total"), "snake_case"),
])
def test_validate_rejects(changes, message):
    with pytest.raises(CatalogError, match=message):
        cat.validate(_bad(**changes))


def test_validate_rejects_a_stored_metric_labelled_by_partition():
    stored = dataclasses.replace(cat.BY_NAME["cluster_partition_epoch"], source=cat.ARRAY)
    with pytest.raises(CatalogError, match="scrape time"):
        cat.validate((stored,))
    cat.validate((cat.BY_NAME["cluster_partition_epoch"],))


def test_validate_rejects_unsorted_buckets_and_duplicates():
    h = cat.BY_NAME["batch_size"]
    with pytest.raises(CatalogError, match="increasing"):
        cat.validate((dataclasses.replace(h, buckets=(1.0, 1.0, 2.0)),))
    with pytest.raises(CatalogError, match="twice"):
        cat.validate((h, h))


def test_render_markdown_lists_every_metric():
    md = cat.render_markdown()
    lines = md.splitlines()
    assert lines[0] == "| name | type | labels | help |"
    for m in cat.CATALOG:
        row = next(line for line in lines if f"`{m.full_name}`" in line)
        assert f"| {m.type} |" in row
        assert m.help in row
    assert "buckets 0.001 0.005 0.01 0.05 0.1 0.5 1 5" in md
    assert "`over_capacity`" in md and "_other" in md


def test_cellmap_blocks_tile_the_row_without_overlap():
    cm = CellMap(n_workers=3, max_spaces=5)
    off = 0
    for name, p in cm.placements.items():
        assert p.base == off, name
        off = p.stop
    assert cm.used_cells == off
    assert "queue_depth" not in cm.placements  # live: not stored
    p = cm.placements["observations_total"]
    assert p.sizes == (6, 3)  # max_spaces + _other, priorities
    assert cm.placements["observation_latency_seconds"].width == 8 + 1 + 2


def test_cellmap_offsets_are_row_major_and_distinct():
    cm = CellMap(n_workers=2, max_spaces=4)
    p = cm.placements["observations_rejected_total"]
    assert cm.offset("observations_rejected_total", {"memory_space": 2, "reason": "duplicate"}) == \
        p.base + (2 * 4 + 2) * p.width
    seen = set()
    for name, p in cm.placements.items():
        for flat in range(p.combos):
            for w in range(p.width):
                seen.add(p.base + flat * p.width + w)
    assert len(seen) == cm.used_cells


def test_cellmap_out_of_range_space_folds_into_other():
    cm = CellMap(n_workers=2, max_spaces=4)
    other = cm.offset("index_vectors", {"memory_space": "_other"})
    assert cm.offset("index_vectors", {"memory_space": 4}) == other
    assert cm.offset("index_vectors", {"memory_space": 10_000}) == other
    assert cm.offset("index_vectors", {"memory_space": -1}) == other
    assert cm.offset("index_vectors", {"memory_space": 3}) != other


@pytest.mark.parametrize("name, labels, message", [
    ("observations_total", {"memory_space": 0, "priority": "urgent"}, "urgent"),
    ("observations_total", {"memory_space": 0}, "priority"),
    ("observations_total", {"memory_space": "default", "priority": "low"}, "space index"),
    ("batches_processed_total", {"worker_id": 2}, "worker_id 2"),
    ("batches_processed_total", {"worker_id": "x"}, "worker_id 'x'"),
    ("worker_restarts_total", {"worker_id": 0, "reason": "duplicate"}, "duplicate"),
])
def test_cellmap_label_errors_name_the_value(name, labels, message):
    cm = CellMap(n_workers=2, max_spaces=4)
    with pytest.raises(LabelError, match=message):
        cm.offset(name, labels)


def test_cellmap_unknown_and_live_metric():
    cm = CellMap(n_workers=2, max_spaces=4)
    with pytest.raises(UnknownMetric, match="nope_total"):
        cm.offset("nope_total", {})
    with pytest.raises(UnknownMetric, match="scrape time"):
        cm.offset("queue_depth", {"priority": "high"})


def test_fingerprint_depends_on_sizing():
    assert CellMap(2, 4).fingerprint == CellMap(2, 4).fingerprint
    assert CellMap(2, 4).fingerprint != CellMap(3, 4).fingerprint
    assert CellMap(2, 4).fingerprint != CellMap(2, 5).fingerprint
