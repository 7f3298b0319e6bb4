"""Where everything of an instance lives in shared memory: names, layouts, sizes.

Objects (``<n>`` = instance name; see ``shm.segment.object_name``)::

    /engram.<n>.ctl         control block (below)
    /engram.<n>.rings       rings[slot][lane], structure of arrays (shm.ring)
    /engram.<n>.query       recall request slots (engine.control.query)
    /engram.<n>.metrics     metric array, one row per writer (metrics.array)
    /engram.<n>.ids         identity table: (space, id) -> stamp, holder (shm.idtable;
                            what it means: engine.ledger)
    sem /engram.<n>.wake.<slot>    wakes a sleeping worker
    sem /engram.<n>.qdone.<j>      wakes the client waiting on query slot j
    <data-dir>/engine.locks        fcntl byte locks: 0 control, 1 breakers,
                                   2 identity table, 64+r ring r, 4096+j query slot j

Control block (``control_layout``), shown for S = 2 slots, M = 1024 spaces,
X = 256 sessions (``Layout.describe()``; tests/unit keep this table in step)::

    offset      bytes  field
         0         16  preamble (magic u64, version u64)
        64      16384  params u1[16384]
     16448        128  hdr i8[16]
     16576        192  slot_sup i8[2, 12]
     16768        128  slot_live f8[2, 8]
     16896      65536  space_names u1[1024, 64]
     82432      16384  shard_counts i8[2, 1024]
     98816      16384  sessions i8[256, 8]
    115200        128  probe f8[2, 8]
    115328        128  breaker f8[2, 8]
    115456        128  breaker_ring u1[2, 64]
    115584         64  tuned f8[8]
    115648       8192  tune_log u1[32, 256]
    123840         64  partitions i8[1, 8]

Fields and their single writers:

- ``params``: JSON of ``engine.config.Params`` (length in ``hdr``); the
  supervisor, once, before the magic is written.
- ``hdr``, ``slot_sup``, ``slot_live``: typed records with each cell's
  writer named in ``engine.control.records``.
- ``space_names``: registered names, NUL-padded ASCII; producers under
  control lock 0 (``engine.control.spaces``).
- ``shard_counts``: vectors in HNSW per (slot, space); row s by the worker
  of slot s only.
- ``sessions``: the gateway's session table (``engine.control.sessions``);
  the gateway only.
- ``probe`` (``ProbeRecord``, row per slot): the recall prober only.
- ``breaker`` (``BreakerRecord``, row per slot) and ``breaker_ring`` (the
  last ``BREAKER_WINDOW`` outcomes of each slot, 1 = failure): every process
  that recalls, and the ``breaker`` command, each read-modify-write holding
  lock byte ``LOCK_BREAKER`` (``engine.recallhealth.board``).
- ``tuned`` (``TunedRecord``): live settings the auto-tuner publishes; the
  supervisor only; workers read it before each batch.
- ``tune_log``: the auto-tuner's audit log, a ring of NUL-padded JSON
  entries (time, setting, old, new, evidence); entry i of
  ``TunedRecord.log_count`` in row ``i % TUNE_LOG_ENTRIES``, written before
  the count; the supervisor only (``engine.supervisor.autotune``).
- ``partitions``: cluster mode's partition table, one row per partition
  (``engine.control.partitions``; one unused row on a single host); the
  cluster follower only.
"""

from __future__ import annotations

from engine.config import Params
from metrics.array import MetricArray
from shm.layout import Field, Layout
from shm.idtable import capacity_for, table_bytes
from shm.ring import ring_bytes

LANES = ("high", "normal", "low")
LANE_INDEX = {name: i for i, name in enumerate(LANES)}
PARAMS_BYTES = 16384
NAME_BYTES = 64
CLAIM_SLOTS = 128
HEADER_CELLS = 16
CONTROL_VERSION = 5  # 4: recall health; 5: partitions table (cluster mode)
BREAKER_RING_BYTES = 64  # outcomes kept per slot: the first BREAKER_WINDOW bytes
TUNED_CELLS = 8
TUNE_LOG_ENTRIES = 32  # the auto-tuner's audit log keeps the last this many changes
TUNE_LOG_BYTES = 256

# A worker whose heartbeat is older than this is absent: not asked for recall,
# stolen from at any depth, reported down (worker_up 0, /health/ready 503).
# Heartbeats come at least every 50 ms idle and once per batch busy.
ABSENT_AFTER_S = 2.0

LOCK_CONTROL = 0
# The breaker table (``breaker``, ``breaker_ring``): every read-modify-write
# of it is made holding this byte (engine.recallhealth.board).
LOCK_BREAKER = 1
# The identity table (shm.idtable): its writers (workers applying operations,
# the supervisor dropping old tombstones) hold this byte.
LOCK_IDS = 2
LOCK_RING_BASE = 64
LOCK_QUERY_BASE = 4096


def control_layout(slots: int, max_spaces: int, max_sessions: int, partitions: int = 1) -> Layout:
    return Layout(CONTROL_VERSION, [
        Field("params", "u1", (PARAMS_BYTES,)),
        Field("hdr", "i8", (HEADER_CELLS,)),
        Field("slot_sup", "i8", (slots, 12)),
        Field("slot_live", "f8", (slots, 8)),
        Field("space_names", "u1", (max_spaces, NAME_BYTES)),
        Field("shard_counts", "i8", (slots, max_spaces)),
        Field("sessions", "i8", (max_sessions, 8)),
        # Version 4: recall health (engine.recallhealth), appended at the end.
        Field("probe", "f8", (slots, 8)),
        Field("breaker", "f8", (slots, 8)),
        Field("breaker_ring", "u1", (slots, BREAKER_RING_BYTES)),
        Field("tuned", "f8", (TUNED_CELLS,)),
        Field("tune_log", "u1", (TUNE_LOG_ENTRIES, TUNE_LOG_BYTES)),
        # Version 5: cluster mode's partition table (engine.control.partitions).
        Field("partitions", "i8", (partitions, 8)),
    ])


def partition_rows(p: Params) -> int:
    """Rows of the cluster partition table: --partitions in cluster mode, else 1 (unused)."""
    return p.partitions if getattr(p, "cluster", None) else 1


def query_layout(p: Params) -> Layout:
    q, s, b, k, d = p.query_slots, p.slots, p.query_batch, p.max_k, p.dim
    return Layout(1, [
        Field("req", "i8", (q, 8)),
        Field("want", "i8", (q, s)),
        Field("done", "i8", (q, s)),
        Field("cols", "i8", (q, s)),
        Field("vectors", "f4", (q, b, d)),
        Field("ids", "u8", (q, s, b, k)),
        Field("dist", "f4", (q, s, b, k)),
    ])


def ring_capacity(p: Params, lane: int) -> int:
    """Records one ring of ``lane`` holds: the engine-wide lane capacity split over the slots."""
    return max(1, -(-p.capacity[lane] // p.slots))


def ring_offsets(p: Params) -> tuple[list[int], int]:
    offsets, off = [], 0
    for _slot in range(p.slots):
        for lane in range(len(LANES)):
            offsets.append(off)
            off += ring_bytes(ring_capacity(p, lane), p.dim, CLAIM_SLOTS)
    return offsets, max(off, 64)


def ring_id(slot: int, lane: int) -> int:
    return slot * len(LANES) + lane


def id_table_capacity(p: Params) -> int:
    """Entries of the identity table: ``--max-ids`` keys, plus one for every
    record the rings can hold (a producer keeps that room free), at a load of
    at most 3/4."""
    return capacity_for(p.max_ids + sum(ring_capacity(p, lane) for lane in range(len(LANES))) * p.slots)


def id_table_bytes(p: Params) -> int:
    return table_bytes(id_table_capacity(p), p.slots, p.max_spaces)


def required_bytes(p: Params) -> int:
    """Shared memory an instance with parameters ``p`` needs, all segments together."""
    return (control_layout(p.slots, p.max_spaces, p.max_sessions, partition_rows(p)).size + ring_offsets(p)[1]
            + query_layout(p).size + MetricArray.nbytes(p.slots, p.max_spaces) + id_table_bytes(p))
