"""engram-streaming: stream embedding vectors into HNSW indexes on every core.

Data flow (one folder of this package per process)::

    remote clients ──gRPC──► gateway/ ─────────┐   sessions, acks, backpressure, recall
    local producers (engine.connect) ──────────┤   producer/: validate → admit → route → enqueue
                                               ▼
    shared memory (control/, shm/): control block │ rings[slot][lane] │ query slots │ metric array
                                               │ claim / commit           ▲ answers
    worker/ 0 … N-1, one process per slot, pinned to one CPU
      answer queries → take a batch (own rings high→normal→low, else steal)
      → hnswlib insert into the slot's shard → WAL append → commit
      storage/: write-ahead log and its generations, forked snapshots,
                recovery (newest good snapshot + the log after it)
    prober/: a known query to every slot through the normal recall path
    exporter/: metric array + control block → /metrics, /health/*, /api/v1/system/*
    supervisor/: creates shared memory, spawns/pins/restarts every child, watchdog,
      graceful stop (drain, final snapshots, the backlog saved for the next start)
    cli/: engram-stream (run wires the supervisor to its children's entry points)
    cluster/ (optional): several hosts on NATS JetStream, partitions by lease

Contract between processes: ``control/`` (typed records, each cell's writer
named and checked). Shared policy: ``recallhealth/``. Remote: ``rpc/`` and
``client/`` (no shared-memory code). Settings: ``config/``. Map of every
module: docs/architecture.md.

This module stays light (no numpy import) so the CLI can pin BLAS threads
before numpy loads.
"""

__all__ = ["connect"]


def connect(name: str = "engram"):
    """Attach to the running instance ``name`` on this host; see ``engine.producer.api.Engine``."""
    from engine.producer.api import connect as _connect
    return _connect(name)
