"""Typed records of the control block, each cell with its single writer named in code.

The control block (``engine.control.layouts``) holds three arrays of
counters and flags that every process reads: the header ``hdr i8[16]``,
one supervisor record per slot ``slot_sup i8[S, 12]`` and one live record
per slot ``slot_live f8[S, 8]``. A record object is a view of one row that
names its cells and checks, on every write, that the process writing is the
cell's writer (``Cell.writers``); a write from any other role raises
``ControlWriteError`` instead of silently breaking the single-writer rule
that makes these cells safe without a lock (DESIGN §4: one writer per
cell, plain aligned 8-byte stores, readers tolerate a stale value).

Roles (``Instance.attach(name, role, slot)``): ``supervisor``, ``worker``
(its own slot only), ``gateway``, ``exporter``, ``producer`` (same-host
``engine.connect``), ``reader`` (status and tools: writes nothing),
``prober`` (the recall prober, ``engine.prober``).

Role views for the per-slot records: the supervisor gets writable
supervisor records and read-only live records; a worker gets its own
slot's live record writable and everything else read-only. Read-only rows
are numpy views with ``writeable = False``, so even a raw index write fails.
"""

from __future__ import annotations

import numpy as np

from engine.errors import EngineError

SUPERVISOR, WORKER, GATEWAY, EXPORTER, PRODUCER, READER, PROBER = \
    "supervisor", "worker", "gateway", "exporter", "producer", "reader", "prober"
ROLES = (SUPERVISOR, WORKER, GATEWAY, EXPORTER, PRODUCER, READER, PROBER)
# Processes that admit observations (the gateway is a producer like any other).
PRODUCERS = (SUPERVISOR, GATEWAY, PRODUCER)
# Processes that register space names: producers, and a worker recovering
# its shards from disk (``engine.control.spaces``: under control lock 0).
REGISTRANTS = PRODUCERS + (WORKER,)
# Processes that send recall requests and so keep the per-slot breakers
# (engine.recallhealth.board); the prober's probes count as recalls.
RECALLERS = PRODUCERS + (PROBER,)


class ControlWriteError(EngineError):
    """A process wrote a control cell whose single writer is another role."""


class Cell:
    """One cell of a record row: its column, type and writers."""

    def __init__(self, column: int, writers: tuple[str, ...], kind: type = int, doc: str = ""):
        self.column = column
        self.writers = writers
        self.kind = kind
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, record, owner=None):
        if record is None:
            return self
        return self.kind(record.row[self.column])

    def __set__(self, record, value) -> None:
        if record.role not in self.writers:
            raise ControlWriteError(f"{record.role} may not write {type(record).__name__}.{self.name} "
                                    f"(written by {' or '.join(self.writers)} only)")
        record.row[self.column] = value


class Record:
    """A view of one row; subclasses declare ``Cell`` attributes."""

    WIDTH = 0

    def __init__(self, row: np.ndarray, role: str, writable: bool = True):
        if not writable:
            row = row.view()
            row.flags.writeable = False
        self.row = row
        self.role = role if writable else READER

    @classmethod
    def cells(cls) -> dict[str, Cell]:
        return {k: v for k, v in vars(cls).items() if isinstance(v, Cell)}

    @classmethod
    def column(cls, table: np.ndarray, cell: str) -> np.ndarray:
        """A read-only column of a whole table (vectorised reads across slots)."""
        col = table[:, vars(cls)[cell].column].view()
        col.flags.writeable = False
        return col

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.cells())
        return f"{type(self).__name__}({body})"


class Header(Record):
    """``hdr i8[16]``: instance-wide cells."""

    WIDTH = 16
    params_len = Cell(0, (SUPERVISOR,), doc="bytes of the JSON parameters at offset 64")
    sup_pid = Cell(1, (SUPERVISOR,), doc="supervisor pid, for signals (liveness: engine.control.liveness)")
    ready = Cell(2, (SUPERVISOR,), doc="1 once every slot runs")
    admission_closed = Cell(3, (SUPERVISOR,), doc="1 from the start of a graceful stop")
    draining = Cell(4, (SUPERVISOR,), doc="1 while the queues drain before a stop")
    stop = Cell(5, (SUPERVISOR,), doc="1: workers finish their batch, snapshot and exit")
    bp_state = Cell(6, PRODUCERS, doc="backpressure state index; changed under control lock 0")
    spaces = Cell(7, REGISTRANTS, doc="registered spaces; written after the name it publishes, under lock 0")
    started = Cell(8, (SUPERVISOR,), doc="unix seconds of the start")
    bp_changed_ms = Cell(9, PRODUCERS, doc="unix ms of the last backpressure transition; under lock 0")
    exporter_pid = Cell(10, (EXPORTER,))
    exporter_port = Cell(11, (EXPORTER,), doc="bound port (--metrics-addr may name port 0)")
    gateway_pid = Cell(12, (GATEWAY,))
    gateway_port = Cell(13, (GATEWAY,), doc="bound gRPC port")
    run_id = Cell(14, (SUPERVISOR,), doc="random id of this run, also in <data-dir>/LOCK (liveness)")
    stamp_offset = Cell(15, (SUPERVISOR,), doc="ns added to time.monotonic_ns() to make an operation's stamp "
                        "(engine.ledger.stamps); set before the magic")


# Slot states, written by the supervisor into SupervisorRecord.state.
DOWN, STARTING, RUNNING, PARKED, STOPPED = range(5)
STATE_NAMES = {DOWN: "down", STARTING: "starting", RUNNING: "running", PARKED: "parked",
               STOPPED: "stopped"}


class SupervisorRecord(Record):
    """``slot_sup i8[S, 12]``, row per slot: single writer, the supervisor."""

    WIDTH = 12
    pid = Cell(0, (SUPERVISOR,), doc="pid of the slot's worker, 0 when none")
    state = Cell(1, (SUPERVISOR,), doc="DOWN, STARTING, RUNNING, PARKED or STOPPED")
    restarts = Cell(2, (SUPERVISOR,))
    cpu = Cell(3, (SUPERVISOR,), doc="pinned CPU, -1 unpinned")
    parked_until = Cell(4, (SUPERVISOR,), doc="unix ms")
    started_at = Cell(5, (SUPERVISOR,), doc="unix ms of the last spawn")
    crash_ring = Cell(6, (SUPERVISOR,), doc="claim the last worker died in (poison-batch detection)")
    crash_start = Cell(7, (SUPERVISOR,))
    crash_count = Cell(8, (SUPERVISOR,), doc="consecutive deaths inside that claim")
    # 9-11: unused


class LiveRecord(Record):
    """``slot_live f8[S, 8]``, row per slot: single writer, that slot's worker.

    Poison batches: the worker publishes the claim it works on in
    ``claim_ring``/``claim_start`` (-1: none); when it dies the supervisor
    copies that into its record's ``crash_*`` cells. Unwritable data
    directory: a worker whose log append fails publishes the errno in
    ``unwritable`` (0 when it can write); producers refuse every
    observation while a running slot shows one."""

    WIDTH = 8
    heartbeat = Cell(0, (WORKER,), float, doc="time.monotonic() of the last heartbeat")
    sleeping = Cell(1, (WORKER,), doc="1 while blocked on its wake signal: producers post it")
    pid = Cell(2, (WORKER,), doc="written last at start: the supervisor sees the slot running")
    recovering = Cell(3, (WORKER,), doc="1 while the worker rebuilds its shards from disk")
    claim_ring = Cell(4, (WORKER,))
    claim_start = Cell(5, (WORKER,))
    unwritable = Cell(6, (WORKER,), doc="errno of a failing log append, 0 when writable")
    recovery_progress = Cell(7, (WORKER,), float, doc="share of the bytes to recover done, 0-1")


# Probe states (ProbeRecord.state), engine.recallhealth.probe.
PROBE_UNKNOWN, PROBE_HEALTHY, PROBE_DEGRADED, PROBE_UNHEALTHY = 0, 1, 2, 3
PROBE_STATE_NAMES = {PROBE_UNKNOWN: "unknown", PROBE_HEALTHY: "healthy", PROBE_DEGRADED: "degraded",
                     PROBE_UNHEALTHY: "unhealthy"}
# Probe failure reasons (ProbeRecord.last_reason).
PROBE_OK, PROBE_WRONG_ANSWER, PROBE_TIMEOUT = 0, 1, 2
PROBE_REASON_NAMES = {PROBE_OK: "ok", PROBE_WRONG_ANSWER: "wrong_answer", PROBE_TIMEOUT: "timeout"}


class ProbeRecord(Record):
    """``probe f8[S, 8]``, row per slot: single writer, the recall prober.

    Times are unix seconds (0: never); the exporter serves the row as is."""

    WIDTH = 8
    state = Cell(0, (PROBER,), doc="PROBE_UNKNOWN until the first probe, then healthy/degraded/unhealthy")
    failures = Cell(1, (PROBER,), doc="consecutive failed probes")
    successes = Cell(2, (PROBER,), doc="consecutive good probes")
    last_success = Cell(3, (PROBER,), float, doc="unix s of the last good probe")
    last_failure = Cell(4, (PROBER,), float, doc="unix s of the last failed probe")
    last_latency = Cell(5, (PROBER,), float, doc="seconds the last probe took (its wait when unanswered)")
    last_reason = Cell(6, (PROBER,), doc="PROBE_OK, PROBE_WRONG_ANSWER or PROBE_TIMEOUT")
    probes = Cell(7, (PROBER,), doc="probes sent to this slot")


# Breaker states (BreakerRecord.state) and manual overrides (BreakerRecord.override).
CLOSED, HALF_OPEN, OPEN = 0, 1, 2
BREAKER_STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}
OVERRIDE_AUTO, OVERRIDE_OPEN, OVERRIDE_CLOSED = 0, 1, 2
OVERRIDE_NAMES = {OVERRIDE_AUTO: "auto", OVERRIDE_OPEN: "open", OVERRIDE_CLOSED: "close"}


class BreakerRecord(Record):
    """``breaker f8[S, 8]``, row per slot: written by any recaller (and the
    ``breaker`` command, a producer) holding lock byte ``LOCK_BREAKER``.

    Times are ``time.monotonic()`` seconds: one clock for every process of
    the host (CLOCK_MONOTONIC is system-wide on Linux, as the heartbeats assume)."""

    WIDTH = 8
    state = Cell(0, RECALLERS, doc="CLOSED, HALF_OPEN or OPEN")
    changed = Cell(1, RECALLERS, float, doc="monotonic s of the last transition")
    pos = Cell(2, RECALLERS, doc="next index to write in the outcome ring")
    samples = Cell(3, RECALLERS, doc="outcomes in the ring (at most the window)")
    failures = Cell(4, RECALLERS, doc="failures among them")
    trials = Cell(5, RECALLERS, doc="requests let through since half-open began")
    override = Cell(6, RECALLERS, doc="OVERRIDE_AUTO, OVERRIDE_OPEN or OVERRIDE_CLOSED (breaker command)")
    transitions = Cell(7, RECALLERS, doc="transitions since start")


class TunedRecord(Record):
    """``tuned f8[8]``: live settings; single writer, the supervisor (auto-tuner).

    Workers read ``batch_budget_ms`` and ``steal_threshold`` before each
    batch; ``generation`` goes up with every change (0: the start values)."""

    WIDTH = 8
    batch_budget_ms = Cell(0, (SUPERVISOR,), float)
    steal_threshold = Cell(1, (SUPERVISOR,))
    generation = Cell(2, (SUPERVISOR,))
    changed = Cell(3, (SUPERVISOR,), float, doc="unix s of the last change")
    log_count = Cell(4, (SUPERVISOR,), doc="audit log entries written since start (tune_log ring)")
    # 5-7: unused
