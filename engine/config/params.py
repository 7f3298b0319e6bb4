"""``Params``: the typed, frozen parameters of one running instance.

The supervisor builds them once from the resolved ``run`` settings plus its
plan (slots, their CPUs), writes them as JSON into the control block, and
every other process reads them back from there (``engine.control.instance``):
a child never re-parses flags, and all processes agree on one set of values.
Fields are the ``run`` settings (tests/unit keep the two lists in step) and
the three derived ones at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any


# Settings the auto-tuner may change live (engine.supervisor.autotune).
TUNABLE = ("batch_budget_ms", "steal_threshold")


@dataclass(frozen=True)
class Params:
    name: str
    data_dir: str  # absolute
    workers: int | str
    workers_per_core: float
    cpus: tuple[int, ...] | None
    no_pin: bool
    dim: int
    metric: str
    hnsw_m: int
    ef_construction: int
    ef_search: int
    capacity_high: int
    capacity_normal: int
    capacity_low: int
    steal_threshold: int
    batch_min: int
    batch_max: int
    batch_budget_ms: float
    query_slice_ms: float
    max_spaces: int
    max_batch_size: int
    max_k: int
    query_slots: int
    query_batch: int
    shard_initial_capacity: int
    worker_timeout: float
    graceful_timeout: float
    restart_backoff_max: float
    flap_restarts: int
    flap_window: float
    park_seconds: float
    fsync: str
    snapshot_interval: float
    snapshot_wal_bytes: int
    no_metrics: bool
    metrics_addr: str
    grpc_addr: str
    max_sessions: int
    session_idle_timeout: float
    auth_token_file: str | None
    tls_cert: str | None
    tls_key: str | None
    grpc_max_message_bytes: int
    log_level: str
    log_format: str
    probe_interval: float = 10.0
    probe_budget_ms: float = 50.0
    breaker: str = "on"
    breaker_cooldown: float = 30.0
    autotune: str = "on"
    autotune_interval: float = 300.0
    # Cluster mode (DESIGN §11); defaults keep single-host parameters short.
    cluster: str | None = None
    nats: tuple[str, ...] | None = None
    nats_token_file: str | None = None
    nats_nkey_seed_file: str | None = None
    nats_creds_file: str | None = None
    nats_ca_file: str | None = None
    host_id: str | None = None
    advertise: str | None = None
    partitions: int = 64
    log_replicas: int = 3
    lease_ttl: float = 10.0
    cluster_snapshot_interval: float = 60.0
    # Forget and upsert (engine.ledger).
    max_ids: int = 4_194_304
    compact_ratio: float = 0.2
    # Derived by the supervisor's plan.
    slots: int = 1
    slot_cpus: tuple[int | None, ...] = ()
    capacity: tuple[int, int, int] = (1, 1, 1)  # engine-wide, per lane high, normal, low
    # Tunable settings the operator gave explicitly: the auto-tuner leaves them alone.
    pinned: tuple[str, ...] = ()

    @classmethod
    def plan(cls, cfg, slots: int, cpus: list[int | None]) -> "Params":
        """From resolved ``run`` settings (``engine.config.Config``) and the CPU plan."""
        values = {f.name: cfg.values[f.name] for f in dataclasses.fields(cls) if f.name in cfg.values}
        values.update(data_dir=os.path.abspath(cfg.data_dir), slots=slots, slot_cpus=tuple(cpus),
                      capacity=(cfg.capacity_high, cfg.capacity_normal, cfg.capacity_low),
                      pinned=tuple(sorted(a for a in TUNABLE if a in getattr(cfg, "explicit", ()))))
        return cls(**values)

    def replace(self, **changes: Any) -> "Params":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> "Params":
        """Parse what ``to_json`` wrote; ValueError names what is missing or wrong.

        Unknown keys are ignored (a newer writer may add fields); sequences
        come back as tuples so the result stays hashable and frozen."""
        raw = json.loads(blob)
        if not isinstance(raw, dict):
            raise ValueError("parameters are not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in values and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"parameters lack {', '.join(missing)}")
        return cls(**values)
