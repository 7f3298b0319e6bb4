"""The metric catalog: one declaration per metric (DESIGN §9), and nothing else.

Every other part of the package derives from ``CATALOG``: the cell layout of
the shared-memory array (``metrics.cells``), label validation in the writer,
the families the collector exports, and the table in the docs
(``render_markdown``). Add a metric here and it exists everywhere.

Label values come from *domains*, declared once in ``DOMAINS``:

* enumerated domains (priority, rejection reason, …) list their values;
* ``worker_id`` is ``"0" .. "n_workers-1"``, sized when the array is laid out;
* ``memory_space`` is a space *index* ``0 .. max_spaces-1`` plus one extra
  column, ``_other``, that catches out-of-range indices. The label *value*
  (the space name) is looked up at scrape time: names live in the engine.

``source="live"`` marks gauges that are not stored in the array: the exporter
computes them at scrape time through a callback (queue depths read from the
rings, the backpressure state read from the control block).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from metrics.errors import CatalogError

PREFIX = "engram_streaming_"

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
SUM, MAX = "sum", "max"
ARRAY, LIVE = "array", "live"

#: Exported label value of the ``memory_space`` column that catches every
#: space index >= max_spaces (bounded cardinality, DESIGN §2).
OTHER_SPACE = "_other"

#: Dynamic domains: their size is given when the array is laid out.
WORKER_ID = "worker_id"
MEMORY_SPACE = "memory_space"
#: Cluster partitions ``"0" .. "partitions-1"`` (bounded by ``--partitions``). Only gauges
#: computed at scrape time may use it: the array's layout does not depend on ``--partitions``.
PARTITION = "partition"

#: Label domains, declared once. ``None`` marks a dynamic domain.
DOMAINS: dict[str, tuple[str, ...] | None] = {
    "priority": ("high", "normal", "low"),
    "rejection_reason": ("over_capacity", "invalid_sequence", "duplicate", "invalid_input"),
    "level": ("normal", "warning", "critical", "overloaded"),
    "error_type": ("insert_error", "resize_error", "wal_error", "other"),
    "restart_reason": ("crash", "hung", "signal"),
    "event": ("opened", "resumed", "closed", "expired", "evicted"),
    "snapshot_result": ("ok", "failed"),
    # A damaged write-ahead log record in the middle of a file
    # (engine.storage.walscan), or an intact one whose space name does not validate.
    "wal_damage": ("corrupt_header", "corrupt_payload", "invalid_space"),
    # Why the exporter closed a connection unserved (metrics.httpserve.REJECT_REASONS).
    "http_reject": ("queue_full", "timeout", "bad_request", "evicted"),
    # Recall health (engine.recallhealth): why a probe failed, breaker states,
    # settings the auto-tuner changes.
    "probe_failure": ("wrong_answer", "timeout"),
    "breaker_state": ("closed", "half_open", "open"),
    "tuned_setting": ("batch_budget_ms", "steal_threshold"),
    # Cluster mode (engine.cluster): how a lease write ended; which NATS connection.
    "lease_result": ("ok", "conflict", "error"),
    "log_client": ("follower", "front"),
    "forget_confirm": ("applied", "unconfirmed"),
    WORKER_ID: None,
    MEMORY_SPACE: None,
    PARTITION: None,
}

#: Backpressure states in order; ``backpressure_state`` exports the index.
BACKPRESSURE_LEVELS = DOMAINS["level"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Metric:
    """One metric. ``name`` has no prefix; ``full_name`` has it.

    ``labels`` are label names in export order; each takes its values from the
    domain of the same name unless ``domains`` maps it to another one (two
    metrics both label ``reason`` with different value sets). ``agg`` says how
    the exporter combines the rows of different writers: ``sum`` (counters,
    histograms, additive gauges) or ``max`` (gauges one writer owns).
    """

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    agg: str = SUM
    source: str = ARRAY
    domains: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def full_name(self) -> str:
        return PREFIX + self.name

    def domain_of(self, label: str) -> str:
        return self.domains.get(label, label)

    @property
    def width(self) -> int:
        """Cells per label combination: 1, or buckets + overflow + sum + count."""
        return len(self.buckets) + 3 if self.type == HISTOGRAM else 1


def _m(name, type_, help_, labels=(), buckets=(), agg=SUM, source=ARRAY, **domains) -> Metric:
    return Metric(name, type_, help_, tuple(labels), tuple(float(b) for b in buckets), agg, source,
                  dict(domains))


_LAT_BUCKETS = (.001, .005, .01, .05, .1, .5, 1, 5)
_SPACE, _PRIO, _WORKER = ("memory_space",), ("priority",), ("worker_id",)

CATALOG: tuple[Metric, ...] = (
    # -- ingestion ----------------------------------------------------------
    _m("observations_total", COUNTER, "Observations inserted into an index.",
       ("memory_space", "priority")),
    _m("observations_rejected_total", COUNTER, "Observations rejected at admission, by reason.",
       ("memory_space", "reason"), reason="rejection_reason"),
    _m("backpressure_activations_total", COUNTER,
       "Backpressure state transitions, labelled by the state entered.", ("level",)),
    _m("batches_processed_total", COUNTER, "Batches inserted by a worker slot.", _WORKER),
    _m("batch_failures_total", COUNTER, "Batches that failed, by error type.",
       ("worker_id", "error_type")),
    _m("work_stolen_total", COUNTER, "Batches a worker slot stole from another slot's rings.",
       _WORKER),
    _m("worker_restarts_total", COUNTER, "Worker processes restarted by the supervisor.",
       ("worker_id", "reason"), reason="restart_reason"),
    # -- queues (computed at scrape time) -------------------------------------
    _m("queue_depth", GAUGE, "Observations waiting in the rings, by priority lane.", _PRIO,
       source=LIVE),
    _m("queue_capacity", GAUGE, "Ring capacity, by priority lane.", _PRIO, source=LIVE),
    _m("queue_memory_bytes", GAUGE, "Bytes of shared memory held by the rings.", source=LIVE),
    _m("backpressure_state", GAUGE,
       "Backpressure state: 0 normal, 1 warning, 2 critical, 3 overloaded.", source=LIVE),
    # -- workers --------------------------------------------------------------
    _m("worker_utilization_ratio", GAUGE, "Busy time over wall time of a worker slot, 0-1.",
       _WORKER, agg=MAX),
    _m("worker_up", GAUGE, "1 if the worker of the slot is alive and heartbeating.", _WORKER,
       agg=MAX),
    _m("active_sessions", GAUGE, "Open gateway sessions (the session table in shared memory).",
       source=LIVE),
    _m("exporter_rejected_connections_total", COUNTER, "Connections the exporter closed without "
       "serving them: its queue was full (503), the client was too slow (408), sent a bad request, or "
       "was evicted while idle (503).", ("reason",), reason="http_reject"),
    _m("sessions_total", COUNTER, "Gateway session events: opened, resumed after a reconnect, closed "
       "by the client, expired idle, evicted (the table was full and it had no stream).", ("event",)),
    _m("index_vectors", GAUGE, "Live observations of a memory space (one per id; forgotten and replaced "
       "vectors are not counted).", _SPACE),
    # -- forget and upsert (engine.ledger) -------------------------------------
    _m("forgets_total", COUNTER, "Forgets applied (an id the space held, or a tombstone for one it did not).",
       _SPACE),
    _m("index_deleted_vectors", GAUGE, "Vectors still in a space's HNSW shards that are forgotten or replaced: "
       "memory not yet given back (compaction rebuilds a shard past --compact-ratio).", _SPACE),
    _m("compactions_total", COUNTER, "Shards rebuilt without their forgotten and replaced vectors.", _SPACE),
    _m("compaction_duration_seconds", HISTOGRAM, "Time from the start to the swap of one shard's compaction "
       "(done in slices between batches).", (), (.01, .05, .1, .5, 1, 5, 10, 30, 60, 300)),
    _m("compaction_reclaimed_bytes_total", COUNTER, "Index bytes given back by compactions: the old index's "
       "size times the share of it that was dead.", _SPACE),
    _m("identity_table_entries", GAUGE, "Keys the identity table tracks: live observations plus tombstones of "
       "recent forgets.", ()),
    _m("identity_table_capacity", GAUGE, "3/4 of the identity table's entries: observations of new ids are "
       "refused once its entries plus every record the rings can hold would pass it (sized so that --max-ids "
       "keys fit).", ()),
    _m("tombstones_dropped_total", COUNTER, "Tombstones dropped once no older operation on their key could "
       "still be applied.", ()),
    # -- latencies and sizes --------------------------------------------------
    _m("observation_latency_seconds", HISTOGRAM,
       "Time from enqueue to inserted in an index.", _SPACE, _LAT_BUCKETS),
    _m("recall_latency_seconds", HISTOGRAM, "Time to answer a recall query.", _SPACE,
       (.001, .005, .01, .02, .05, .1, .5)),
    _m("recall_queries_total", COUNTER, "Recall queries answered.", _SPACE),
    _m("batch_size", HISTOGRAM, "Observations per inserted batch.", _WORKER,
       (1, 10, 50, 100, 250, 500, 1000)),
    _m("queue_wait_time_seconds", HISTOGRAM, "Time an observation waited in its ring.", _PRIO,
       (.001, .005, .01, .05, .1, .5, 1)),
    # -- durability -----------------------------------------------------------
    _m("wal_appends_total", COUNTER, "Batches appended to a worker slot's write-ahead log.", _WORKER),
    _m("wal_bytes_total", COUNTER, "Bytes appended to a worker slot's write-ahead log.", _WORKER),
    _m("wal_fsync_seconds", HISTOGRAM, "Duration of a write-ahead log fsync.", (),
       (.0001, .0005, .001, .005, .01, .05, .1, .5)),
    _m("wal_size_bytes", GAUGE, "Bytes of write-ahead log on disk, per worker slot.", _WORKER, agg=MAX),
    _m("wal_records_recovered_total", COUNTER, "Write-ahead log batches replayed into shards at start.",
       _WORKER),
    _m("wal_records_skipped_total", COUNTER,
       "Write-ahead log records skipped at recovery: damaged in the middle of a log (the records "
       "after them are replayed), or naming an invalid memory space; by reason.", ("worker_id", "reason"), reason="wal_damage"),
    _m("wal_bytes_skipped_total", COUNTER,
       "Bytes of damaged write-ahead log skipped in the middle of a log at recovery (left in the "
       "file), by what was damaged.", ("worker_id", "reason"), reason="wal_damage"),
    _m("wal_records_dropped_total", COUNTER,
       "Write-ahead log records in torn or corrupt tails cut off at recovery (those whose header "
       "was still recognisable).", _WORKER),
    _m("wal_bytes_dropped_total", COUNTER,
       "Bytes of torn or corrupt write-ahead log tail cut off at recovery.", _WORKER),
    _m("wal_truncations_total", COUNTER,
       "Torn or corrupt write-ahead log tails cut off at recovery (one per log file).", _WORKER),
    _m("snapshots_total", COUNTER, "Shard snapshots a worker slot finished, by result.",
       ("worker_id", "result"), result="snapshot_result"),
    _m("snapshot_duration_seconds", HISTOGRAM, "Time to write one slot's snapshot (in its child process).",
       (), (.01, .05, .1, .5, 1, 5, 10, 30, 60, 300)),
    _m("snapshot_last_success_timestamp_seconds", GAUGE,
       "Unix time of the last snapshot a worker slot finished.", _WORKER, agg=MAX),
    _m("snapshot_fallbacks_total", COUNTER,
       "Snapshots found corrupt or incomplete at recovery and skipped for an older one.", _WORKER),
    _m("snapshot_shards_skipped_total", COUNTER,
       "Snapshot shards skipped at recovery because their memory-space name is not valid.", _WORKER),
    _m("data_dir_unwritable", GAUGE,
       "1 while a worker slot cannot write its write-ahead log (disk full, I/O error); admission is stopped.",
       _WORKER, agg=MAX),
    _m("deadletter_batches_total", COUNTER,
       "Batches set aside in the dead-letter file after killing a worker twice.", _WORKER),
    # -- recall health (engine.recallhealth) -------------------------------------
    _m("recall_probe_latency_seconds", HISTOGRAM, "Time a worker slot took to answer the recall probe "
       "(its wait when it did not answer).", _WORKER, (.001, .005, .01, .025, .05, .1, .25, .5)),
    _m("recall_probe_failures_total", COUNTER, "Recall probes that failed, by slot and reason: "
       "wrong_answer (not the known neighbours) or timeout (slower than --probe-budget-ms).",
       ("worker_id", "reason"), reason="probe_failure"),
    _m("recall_probe_state", GAUGE, "Recall probe state of a worker slot: 0 unknown, 1 healthy, "
       "2 degraded, 3 unhealthy.", _WORKER, source=LIVE),
    _m("recall_breaker_state", GAUGE, "Recall circuit breaker of a worker slot: 0 closed, 1 half-open, "
       "2 open.", _WORKER, source=LIVE),
    _m("recall_breaker_transitions_total", COUNTER, "Recall breaker transitions, by slot and states.",
       ("worker_id", "from", "to"), **{"from": "breaker_state", "to": "breaker_state"}),
    _m("recall_breaker_short_circuits_total", COUNTER, "Recall requests that skipped a worker slot "
       "because its breaker was open.", _WORKER),
    _m("autotune_changes_total", COUNTER, "Live setting changes made by the auto-tuner, by setting.",
       ("setting",), setting="tuned_setting"),
    # -- cluster mode (engine.cluster: the follower and the front) ----------------
    _m("cluster_lease_acquisitions_total", COUNTER, "Partition lease acquisitions this host attempted, "
       "by result: ok, conflict (another host won the compare-and-set), error (NATS did not answer).",
       ("result",), result="lease_result"),
    _m("cluster_lease_renewals_total", COUNTER, "Lease renewals of held partitions, by result: ok, "
       "conflict (the lease was taken by another host: the partition is lost), error (NATS did not "
       "answer; retried until the lease runs out).", ("result",), result="lease_result"),
    _m("cluster_lease_conflicts_total", COUNTER, "Lease compare-and-set writes lost to another host "
       "(acquire, renew or release)."),
    _m("cluster_failovers_total", COUNTER, "Partitions this host took over from an owner whose lease "
       "expired without being released."),
    _m("cluster_partition_epoch", GAUGE, "Lease epoch this host holds for a partition; 0 when it does "
       "not hold it (read from the partition table).", ("partition",), source=LIVE),
    _m("cluster_partitions_owned", GAUGE, "Partitions this host holds a lease for (loading or serving).",
       source=LIVE),
    _m("cluster_apply_lag_messages", GAUGE, "Largest distance, over the partitions this host holds, "
       "between the partition's last stream sequence and the last one applied (an upper bound on "
       "messages not yet applied; refreshed every ttl/3).", source=LIVE),
    _m("cluster_publish_latency_seconds", HISTOGRAM, "Time the front waited for the stream's "
       "acknowledgement of a published batch.", (), (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)),
    _m("cluster_publish_failures_total", COUNTER, "Batches the front could not publish (no "
       "acknowledgement from the stream); the client was answered UNAVAILABLE."),
    _m("cluster_forget_confirm_seconds", HISTOGRAM, "Time a unary Forget waited, after the stream stored "
       "it, for the partition's owner to confirm it applied the forgets (result=applied), or until the "
       "call's deadline without that (result=unconfirmed: answered applied=false).", ("result",),
       (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), result="forget_confirm"),
    _m("cluster_snapshot_uploads_total", COUNTER, "Partition snapshot uploads to the object store, by "
       "result.", ("result",), result="snapshot_result"),
    _m("cluster_snapshot_last_upload_timestamp_seconds", GAUGE, "Unix time of this host's last "
       "successful partition snapshot upload (0: none yet).", agg=MAX),
    _m("cluster_log_connected", GAUGE, "1 while a NATS connection of this host is up, by client: the "
       "follower (leases, applying) or the front (publishing).", ("client",), agg=MAX,
       client="log_client"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}


def validate(catalog: tuple[Metric, ...] = CATALOG) -> None:
    """Raise ``CatalogError`` on a declaration that breaks the conventions."""
    seen: set[str] = set()
    for m in catalog:
        where = f"metric {m.name!r}"
        if m.name in seen:
            raise CatalogError(f"{where}: declared twice")
        seen.add(m.name)
        if not _NAME_RE.match(m.name):
            raise CatalogError(f"{where}: not snake_case")
        if m.type not in (COUNTER, GAUGE, HISTOGRAM):
            raise CatalogError(f"{where}: unknown type {m.type!r}")
        if (m.type == COUNTER) != m.name.endswith("_total"):
            raise CatalogError(f"{where}: '_total' is for counters, and only them")
        if m.agg not in (SUM, MAX) or (m.agg == MAX and m.type != GAUGE):
            raise CatalogError(f"{where}: aggregation {m.agg!r} (max only for gauges)")
        if m.source not in (ARRAY, LIVE) or (m.source == LIVE and m.type != GAUGE):
            raise CatalogError(f"{where}: source {m.source!r} (live only for gauges)")
        if not m.help.strip():
            raise CatalogError(f"{where}: no help text")
        if m.type == HISTOGRAM:
            b = m.buckets
            if not b or any(x >= y for x, y in zip(b, b[1:])) or b[-1] == float("inf"):
                raise CatalogError(f"{where}: buckets must be finite and strictly increasing")
        elif m.buckets:
            raise CatalogError(f"{where}: buckets on a {m.type}")
        if len(set(m.labels)) != len(m.labels) or "le" in m.labels:
            raise CatalogError(f"{where}: bad label names {m.labels}")
        for label in m.labels:
            if m.domain_of(label) not in DOMAINS:
                raise CatalogError(f"{where}: label {label!r} has no domain")
            if label in (WORKER_ID, MEMORY_SPACE, PARTITION) and m.domain_of(label) != label:
                raise CatalogError(f"{where}: label {label!r} must use its own domain")
            if m.domain_of(label) == PARTITION and m.source != LIVE:
                raise CatalogError(f"{where}: label {label!r} only on gauges computed at scrape time")
        if set(m.domains) - set(m.labels):
            raise CatalogError(f"{where}: domain given for an undeclared label")


validate()


def _fmt_bucket(b: float) -> str:
    return f"{b:g}"


def render_markdown(catalog: tuple[Metric, ...] = CATALOG) -> str:
    """The catalog as Markdown: a metric table, then the label domains."""
    lines = ["| name | type | labels | help |", "|---|---|---|---|"]
    for m in catalog:
        notes = []
        if m.type == HISTOGRAM:
            notes.append("buckets " + " ".join(_fmt_bucket(b) for b in m.buckets))
        if m.source == LIVE:
            notes.append("computed at scrape time")
        if m.agg == MAX:
            notes.append("max across writers")
        help_ = m.help + (f" ({'; '.join(notes)})" if notes else "")
        labels = ", ".join(m.labels) or "—"
        lines.append(f"| `{m.full_name}` | {m.type} | {labels} | {help_} |")
    lines += ["", "| label domain | values |", "|---|---|"]
    for name, values in DOMAINS.items():
        if name == WORKER_ID:
            shown = '"0" … "n_workers-1" (the worker slot)'
        elif name == PARTITION:
            shown = '"0" … "partitions-1" (cluster mode, `--partitions`)'
        elif name == MEMORY_SPACE:
            shown = f"space name; indices beyond `--max-spaces` fold into `{OTHER_SPACE}`"
        else:
            shown = ", ".join(f"`{v}`" for v in values)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines) + "\n"
