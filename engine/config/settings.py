"""Every setting of the engine, declared once (STYLE §8).

Each ``Setting`` (name, parser, default, help, the commands it applies to)
gives the command-line flag ``--<name>``, the environment variable
``ENGRAM_<NAME>``, the TOML key ``<name>`` (``--config file.toml``) and a row
of the table in ``docs/configuration.md``. ``COMMANDS`` is the one list of
subcommands: the CLI builds its parser and its dispatch from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine.config import parsers as p

# Subcommand → one-line help. The CLI parser, its handlers and the settings'
# ``commands`` all refer to these names (tests check they agree).
COMMANDS = {
    "run": "Start an instance: supervisor and one pinned worker per CPU.",
    "status": "Workers, pids, CPUs, states, queue depths, spaces.",
    "load": "Synthetic load with a progress line: rate, duration, spaces, priority mix.",
    "recall": "Quick k-NN recall from the shell.",
    "forget": "Forget observations by id: no recall returns them once applied.",
    "stop": "Graceful stop: drain, then exit.",
    "top": "Live view: per worker CPU, utilisation, queues, inserted/s, latencies; q quits.",
    "deadletter": "List batches set aside after killing a worker twice (reads --data-dir).",
    "breaker": "Force a worker slot's recall circuit breaker open or closed, or back to auto.",
    "tune": "Measure this host with short calibrated ingests; recommend --workers-per-core.",
    "cluster": "Cluster mode: status (hosts, partitions, owners, lag) or drain HOST.",
}
# Settings shared by every command that talks to a running instance.
ALL = ("run", "status", "load", "recall", "forget", "stop", "top", "breaker")
# Settings of the index that ``tune`` measures with (the configured ones).
INDEX = ("run", "tune")
# Settings of cluster mode (DESIGN §11) that ``cluster status|drain`` also needs.
CLUSTER = ("run", "cluster")


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = ""
    flag_only: bool = False  # boolean switch: present means true
    commands: tuple[str, ...] = ("run",)

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return "ENGRAM_" + self.name.upper().replace("-", "_")

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("name", p.instance_name, "engram", "Instance name; names its shared memory.", "NAME", commands=ALL),
    Setting("data-dir", str, "./engram-data", "Data directory (lock, write-ahead logs, dead letters).", "DIR",
            commands=("run", "deadletter")),
    Setting("workers", p.workers, "auto", "Worker processes: a number, or auto = usable CPUs x workers-per-core.", "N|auto"),
    Setting("workers-per-core", p.positive_float, 1.0, "Workers per usable CPU when --workers auto.", "X"),
    Setting("cpus", p.cpus, None, "CPUs to pin workers to (default: this process's affinity).", "LIST"),
    Setting("no-pin", p.boolean, False, "Do not pin workers to CPUs.", flag_only=True),
    Setting("dim", p.positive_int, 768, "Vector dimension.", "D", commands=INDEX),
    Setting("metric", p.choice("cosine", "l2", "ip"), "cosine", "Distance: cosine, l2 (squared) or ip.", "NAME", commands=INDEX),
    Setting("hnsw-m", p.positive_int, 16, "HNSW M (links per node).", "M", commands=INDEX),
    Setting("ef-construction", p.positive_int, 200, "HNSW ef at construction.", "EF", commands=INDEX),
    Setting("ef-search", p.positive_int, 64, "HNSW ef at query time (raised to k when smaller).", "EF", commands=INDEX),
    Setting("capacity-high", p.positive_int, 10_000, "Engine-wide capacity of the high lane.", "N"),
    Setting("capacity-normal", p.positive_int, 100_000, "Engine-wide capacity of the normal lane.", "N"),
    Setting("capacity-low", p.positive_int, 50_000, "Engine-wide capacity of the low lane.", "N"),
    Setting("steal-threshold", p.non_negative_int, 1000, "Depth above which an idle worker steals from a ring.", "N"),
    Setting("batch-min", p.positive_int, 10, "Smallest insert batch.", "N"),
    Setting("batch-max", p.positive_int, 1000, "Largest insert batch.", "N"),
    Setting("query-slice-ms", p.positive_float, 2.0, "While recall queries are arriving, a worker inserts in "
            "slices of about this long and answers pending queries between them (5 ms slices otherwise).", "MS"),
    Setting("batch-budget-ms", p.positive_float, 50.0, "Time budget of one insert batch (claim, insert, commit).", "MS"),
    Setting("max-spaces", p.positive_int, 1024, "Most memory spaces per engine (bounds label cardinality).", "N"),
    Setting("max-batch-size", p.positive_int, 10_000, "Most observations in one observe() call.", "N"),
    Setting("max-k", p.positive_int, 256, "Largest k a recall may ask for.", "K"),
    Setting("query-slots", p.positive_int, 16, "Concurrent recall requests in shared memory.", "N"),
    Setting("query-batch", p.positive_int, 16, "Query vectors per recall request slot (larger recalls are chunked).", "N"),
    Setting("max-ids", p.positive_int, 4_194_304, "Most distinct (space, id) keys the engine tracks at once: live "
            "observations plus recently forgotten ones (24 bytes of shared memory per table entry, the table "
            "kept at most 3/4 full).", "N"),
    Setting("compact-ratio", p.fraction, 0.2, "A shard whose deleted or replaced vectors exceed this share of it "
            "is rebuilt without them (in slices between batches), giving their memory back.", "X"),
    Setting("shard-initial-capacity", p.positive_int, 1024, "Initial HNSW shard capacity (doubles when full).", "N"),
    Setting("worker-timeout", p.positive_float, 30.0, "Seconds without heartbeat before a worker is killed as hung.", "S"),
    Setting("graceful-timeout", p.positive_float, 30.0, "Seconds to drain queues on SIGTERM before stopping anyway, and again for the workers' final "
            "snapshots.", "S"),
    Setting("restart-backoff-max", p.positive_float, 10.0, "Longest delay before restarting a crashed worker.", "S"),
    Setting("flap-restarts", p.positive_int, 5, "Crashes within --flap-window that park a worker slot.", "N"),
    Setting("flap-window", p.positive_float, 60.0, "Window for counting crashes.", "S"),
    Setting("park-seconds", p.positive_float, 60.0, "How long a flapping slot stays parked.", "S"),
    Setting("fsync", p.choice("always", "interval", "never"), "interval",
            "Write-ahead log sync: always (every batch), interval (at most ~1 s of inserted data at risk "
            "on power loss), never (left to the kernel).", "POLICY"),
    Setting("snapshot-interval", p.non_negative_float, 600.0,
            "Seconds after which a worker snapshots its shards if anything was logged since its last "
            "snapshot (0: no time trigger).", "S"),
    Setting("snapshot-wal-bytes", p.non_negative_int, 256 * 2**20,
            "Bytes of write-ahead log not covered by a snapshot after which a worker snapshots its "
            "shards (0: no size trigger). With both triggers 0, only a graceful stop snapshots.", "N"),
    Setting("no-metrics", p.boolean, False, "Record no metrics (the exporter serves zeros); only for measuring "
            "what recording costs.", flag_only=True),
    Setting("metrics-addr", p.addr, "127.0.0.1:9090", "Exporter bind address (Prometheus /metrics, health).", "HOST:PORT"),
    Setting("grpc-addr", p.addr_or_off, "127.0.0.1:50051", "Gateway bind address (gRPC), or off for no "
            "gateway.", "HOST:PORT|off"),
    Setting("max-sessions", p.positive_int, 256, "Most streaming sessions open at once (gateway).", "N"),
    Setting("session-idle-timeout", p.positive_float, 300.0, "Seconds without a message after which a "
            "session expires.", "S"),
    Setting("auth-token-file", p.optional_path, None, "File holding the bearer token gRPC callers must "
            "send (default: no authentication).", "FILE"),
    Setting("tls-cert", p.optional_path, None, "PEM certificate chain for gRPC over TLS (with --tls-key).",
            "FILE"),
    Setting("tls-key", p.optional_path, None, "PEM private key for gRPC over TLS (with --tls-cert).", "FILE"),
    Setting("grpc-max-message-bytes", p.positive_int, 64 << 20, "Largest gRPC message the gateway "
            "accepts or sends.", "BYTES"),
    Setting("probe-interval", p.positive_float, 10.0, "Seconds between recall probes of every worker slot.", "S"),
    Setting("probe-budget-ms", p.positive_float, 50.0, "A recall probe slower than this fails (timeout); the "
            "recall breaker counts answers slower than 1.5 x this as failures.", "MS"),
    Setting("breaker", p.choice("on", "off"), "on", "Per worker slot circuit breakers on the recall fan-out.",
            "on|off"),
    Setting("breaker-cooldown", p.positive_float, 30.0, "Seconds an open recall breaker waits before letting "
            "trial requests through (half-open).", "S"),
    Setting("autotune", p.choice("on", "off"), "on", "Let the supervisor tune --batch-budget-ms and "
            "--steal-threshold live (a value given explicitly by flag, environment or file stays pinned).",
            "on|off"),
    Setting("autotune-interval", p.positive_float, 300.0, "Seconds between auto-tuner decisions (at most one "
            "change per setting per interval).", "S"),
    Setting("cluster", p.optional_name, None, "Cluster name: run as one host of this cluster, on NATS "
            "JetStream (default: a single host, no cluster).", "NAME", commands=CLUSTER),
    Setting("nats", p.urls, None, "NATS server URLs of the cluster's JetStream, comma-separated (cluster "
            "mode).", "URL[,URL...]", commands=CLUSTER),
    Setting("nats-token-file", p.optional_path, None, "File holding the NATS token.", "FILE", commands=CLUSTER),
    Setting("nats-nkey-seed-file", p.optional_path, None, "File holding the NATS NKey seed.", "FILE",
            commands=CLUSTER),
    Setting("nats-creds-file", p.optional_path, None, "NATS user credentials file (JWT and seed).", "FILE",
            commands=CLUSTER),
    Setting("nats-ca-file", p.optional_path, None, "PEM CA bundle that signs the NATS servers' TLS "
            "certificates.", "FILE", commands=CLUSTER),
    Setting("host-id", p.optional_name, None, "This host's id in the cluster (unique among live hosts).",
            "ID"),
    Setting("advertise", p.optional_addr, None, "Address other hosts reach this host's gRPC gateway at "
            "(default: --grpc-addr, which then needs a fixed port).", "HOST:PORT"),
    Setting("partitions", p.int_between(1, 4096), 64, "Partitions of a new cluster; stored in the cluster "
            "at creation, a host starting with another value is refused.", "P"),
    Setting("log-replicas", p.int_between(1, 5), 3, "Replicas of the cluster's stream, key-value bucket and "
            "object store (at creation).", "N"),
    Setting("lease-ttl", p.positive_float, 10.0, "Seconds a partition lease lasts without renewal "
            "(renewed every third of it); also how long a dead host's partitions wait.", "S", commands=CLUSTER),
    Setting("cluster-snapshot-interval", p.non_negative_float, 60.0, "Seconds between uploads of an owned "
            "partition's snapshot to the object store, after which its stream prefix is purged (0: never).",
            "S"),
    Setting("log-level", p.choice("debug", "info", "warning", "error"), "info", "Log level.", "LEVEL"),
    Setting("log-format", p.choice("text", "json"), "text", "Log lines on stderr: text for people, json (one "
            "object per line: time, level, role, slot, pid, message, exception) for log shippers.", "FORMAT"),
    Setting("rate", p.positive_float, 5000.0, "Target observations per second.", "N", commands=("load",)),
    Setting("duration", p.positive_float, 20.0, "Seconds of load.", "S", commands=("load",)),
    Setting("spaces", p.positive_int, 3, "Memory spaces to load: default, space-1, space-2, ...", "N",
            commands=("load",)),
    Setting("priority-mix", p.mix, "high:0.1,normal:0.7,low:0.2", "Share of each priority.", "MIX",
            commands=("load",)),
    Setting("load-batch", p.positive_int, 100, "Observations per observe() call.", "N", commands=("load",)),
    Setting("space", p.space, "default", "Memory space to query (recall) or to forget ids of (forget).", "SPACE",
            commands=("recall", "forget")),
    Setting("k", p.positive_int, 10, "Neighbours to return.", "K", commands=("recall",)),
    Setting("random", p.boolean, False, "Query with a random vector.", flag_only=True, commands=("recall",)),
    Setting("vector", p.optional_floats, None, "Query vector as comma-separated floats.", "X,Y,...",
            commands=("recall",)),
    Setting("fresh", p.boolean, False, "Also scan observations still queued.", flag_only=True,
            commands=("recall",)),
    Setting("ef", p.optional_positive_int, None, "HNSW ef for this query (default --ef-search).", "EF",
            commands=("recall",)),
    Setting("ids", p.optional_ids, None, "Ids to forget, comma-separated.", "ID,ID,...", commands=("forget",)),
    Setting("ids-file", p.optional_path, None, "File of ids to forget, one per line or separated by whitespace "
            "or commas (with --ids: both).", "FILE", commands=("forget",)),
    Setting("wait", p.non_negative_float, 10.0, "Seconds to wait until the forgets are applied (0: return once "
            "they are accepted).", "S", commands=("forget",)),
    Setting("json", p.boolean, False, "Print JSON.", flag_only=True,
            commands=("status", "recall", "forget", "deadletter")),
    Setting("interval", p.positive_float, 1.0, "Seconds between the two metric samples behind rates "
            "(top: between refreshes).", "S", commands=("status", "top")),
    Setting("count", p.non_negative_int, 0, "Frames to show before exiting (0: until q is pressed; 1 when "
            "the output is not a terminal).", "N", commands=("top",)),
    Setting("seconds", p.positive_float, 10.0, "Seconds of ingest per measured step.", "S",
            commands=("tune",)),
    Setting("write", p.optional_path, None, "Write the recommended settings as a TOML file that run --config "
            "accepts.", "FILE", commands=("tune",)),
    Setting("timeout", p.positive_float, 120.0, "Seconds to wait for the instance to stop.", "S",
            commands=("stop",)),
)
BY_NAME = {s.name: s for s in SETTINGS}
