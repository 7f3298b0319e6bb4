"""engram-streaming: stream embedding vectors into HNSW indexes on every core.

Data flow::

    producers (engine.connect, same host)        recall clients
      │ validate → admit → route → enqueue         │ fresh scan, fan-out
      ▼                                            ▼
    shared memory:  control block │ rings[slot][lane] │ query slots
      │                               ▲ claim/commit       ▲ answers
      ▼                               │                    │
    worker 0 … N-1 (one process per slot, pinned to one CPU)
      answer queries → take a batch (own rings high→normal→low, else steal)
      → hnswlib add_items into the slot's shard of the space → commit
    supervisor: creates shared memory, spawns/pins/restarts workers,
      watchdog on heartbeats, drain on SIGTERM

Modules: ``supervisor`` (arbiter; ``preflight``, ``children``, ``signals``,
``child``), ``worker`` (loop), ``exporter`` (metrics and health process), ``instance`` (shared
layout), ``producer`` (observe/recall client), ``query`` (recall protocol),
``shards`` (hnswlib), ``scheduler`` (lanes, batch size), ``admission`` and
``pressure`` (backpressure), ``routing``, ``validation``, ``recall`` (merge),
``config`` (settings declared once), ``cli``, ``loadgen``, ``status``.

This module stays light (no numpy import) so the CLI can pin BLAS threads
before numpy loads.
"""

__all__ = ["connect"]


def connect(name: str = "engram"):
    """Attach to the running instance ``name`` on this host; see ``engine.producer.api.Engine``."""
    from engine.producer.api import connect as _connect
    return _connect(name)
