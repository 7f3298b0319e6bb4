"""The shared memory of one running instance: what exists, where, who writes it.

Objects (``<n>`` = instance name; see ``shm.segment.object_name``)::

    /engram.<n>.ctl         control block (layout below)
    /engram.<n>.rings       rings[slot][lane], structure of arrays (shm.ring)
    /engram.<n>.query       recall request slots (engine.control.query)
    sem /engram.<n>.wake.<slot>    wakes a sleeping worker
    sem /engram.<n>.qdone.<j>      wakes the client waiting on query slot j
    <data-dir>/engine.locks        fcntl byte locks: 0 control, 64+r ring r,
                                   4096+j query slot j

Control block (``CONTROL``; offsets from ``Layout.describe()``, S = slots,
M = max spaces)::

    0       preamble: magic, layout version
    64      params   u8[16384]  JSON of the instance parameters; supervisor, once
    16448   hdr      i64[16]    H_* below
    16576   slot_sup i64[S, 12] per slot, written by the supervisor only (SUP_*)
    ...     slot_live f64[S, 8] per slot, written by that slot's worker only (LIVE_*)
    ...     space_names u8[M, 64]  registered space names; producers, under lock 0
    ...     shard_counts i64[S, M] vectors in HNSW per (slot, space); the slot's worker
    ...     sessions i64[X, 8]    gateway session table (engine.control.sessions, X =
                                  --max-sessions); the gateway only

Poison batches: a worker writes the claim it is working on into
``slot_live[LIVE_CLAIM_RING, LIVE_CLAIM_START]`` (-1 when none); when it dies,
the supervisor copies that claim into ``slot_sup[SUP_CRASH_RING,
SUP_CRASH_START]`` and counts consecutive deaths on the same claim in
``SUP_CRASH_COUNT``; the next worker of the slot dead-letters a claim that
has killed two workers instead of processing it a third time.

Unwritable data directory: a worker whose write-ahead log append fails
(disk full, file-size limit, I/O error) writes the errno into
``slot_live[LIVE_UNWRITABLE]`` (0 when it can write) and retries; producers
refuse every observation while any running slot shows one
(``engine.control.pressure.unwritable``). Column 6 was unused before, so the
layout (and its version) is unchanged; column 7 is still unused.

``hdr`` cells and their single writer: H_SUP_PID, H_READY, H_ADMISSION_CLOSED,
H_DRAINING, H_STOP, H_STARTED: supervisor. H_BP_STATE, H_BP_CHANGED_MS (unix
ms of the last transition): any producer or the supervisor, under control
lock 0. H_SPACES: producers under lock 0, written after the name it
publishes. H_EXPORTER_PID, H_EXPORTER_PORT: the exporter (its bound port, so
``--metrics-addr`` may name port 0). H_GATEWAY_PID, H_GATEWAY_PORT,
H_SESSIONS: the gateway (pid, bound gRPC port, open sessions).

The metric array (``/engram.<n>.metrics``, ``metrics.array.MetricArray``)
has one row per writer: supervisor, gateway, exporter, each worker slot,
leased producer rows (byte locks in ``<data-dir>/metrics.locks``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from metrics.array import MetricArray
from shm.errors import LayoutError, SegmentMissing
from shm.layout import Field, Layout
from shm.lock import LockFile
from shm.ring import Ring, ring_bytes
from shm.segment import Segment, WakeSignal, object_name

LANES = ("high", "normal", "low")
LANE_INDEX = {name: i for i, name in enumerate(LANES)}
PARAMS_BYTES = 16384
NAME_BYTES = 64
CLAIM_SLOTS = 128

H_PARAMS_LEN, H_SUP_PID, H_READY, H_ADMISSION_CLOSED, H_DRAINING, H_STOP, H_BP_STATE, H_SPACES, \
    H_STARTED, H_BP_CHANGED_MS, H_EXPORTER_PID, H_EXPORTER_PORT, H_GATEWAY_PID, H_GATEWAY_PORT, \
    H_SESSIONS = range(15)
SUP_PID, SUP_STATE, SUP_RESTARTS, SUP_CPU, SUP_PARKED_UNTIL, SUP_STARTED_AT, \
    SUP_CRASH_RING, SUP_CRASH_START, SUP_CRASH_COUNT = range(9)
LIVE_HEARTBEAT, LIVE_SLEEPING, LIVE_PID, LIVE_READY, LIVE_CLAIM_RING, LIVE_CLAIM_START, \
    LIVE_UNWRITABLE = range(7)

# Slot states, written by the supervisor into slot_sup[:, SUP_STATE].
DOWN, STARTING, RUNNING, PARKED, STOPPED = range(5)
STATE_NAMES = {DOWN: "down", STARTING: "starting", RUNNING: "running", PARKED: "parked",
               STOPPED: "stopped"}

# A worker whose heartbeat is older than this is absent: not asked for recall,
# stolen from at any depth, reported down (worker_up 0, /health/ready 503).
# Heartbeats come at least every 50 ms idle and once per batch busy.
ABSENT_AFTER_S = 2.0

LOCK_CONTROL = 0
LOCK_RING_BASE = 64
LOCK_QUERY_BASE = 4096


def control_layout(slots: int, max_spaces: int, max_sessions: int) -> Layout:
    return Layout(3, [
        Field("params", "u1", (PARAMS_BYTES,)),
        Field("hdr", "i8", (16,)),
        Field("slot_sup", "i8", (slots, 12)),
        Field("slot_live", "f8", (slots, 8)),
        Field("space_names", "u1", (max_spaces, NAME_BYTES)),
        Field("shard_counts", "i8", (slots, max_spaces)),
        Field("sessions", "i8", (max_sessions, 8)),
    ])


def query_layout(p: dict) -> Layout:
    q, s, b, k, d = p["query_slots"], p["slots"], p["query_batch"], p["max_k"], p["dim"]
    return Layout(1, [
        Field("req", "i8", (q, 8)),
        Field("want", "i8", (q, s)),
        Field("done", "i8", (q, s)),
        Field("cols", "i8", (q, s)),
        Field("vectors", "f4", (q, b, d)),
        Field("ids", "u8", (q, s, b, k)),
        Field("dist", "f4", (q, s, b, k)),
    ])


def ring_capacity(p: dict, lane: int) -> int:
    total = p["capacity"][lane]
    return max(1, -(-total // p["slots"]))


def ring_offsets(p: dict) -> tuple[list[int], int]:
    offsets, off = [], 0
    for slot in range(p["slots"]):
        for lane in range(len(LANES)):
            offsets.append(off)
            off += ring_bytes(ring_capacity(p, lane), p["dim"], CLAIM_SLOTS)
    return offsets, max(off, 64)


def ring_id(slot: int, lane: int) -> int:
    return slot * len(LANES) + lane


def required_bytes(p: dict) -> int:
    """Shared memory an instance with parameters ``p`` needs, all segments together."""
    return (control_layout(p["slots"], p["max_spaces"], p["max_sessions"]).size + ring_offsets(p)[1]
            + query_layout(p).size + MetricArray.nbytes(p["slots"], p["max_spaces"]))


class Instance:
    """Mapped views of every shared object of an instance.

    ``create`` is for the supervisor only (and unit tests); everyone else uses
    ``attach``. ``close`` unmaps; ``unlink`` (creator only) removes.
    """

    def __init__(self, params: dict):
        self.params = params
        self.name = params["name"]
        self.slots = params["slots"]
        self.dim = params["dim"]
        self.segments: list[Segment] = []
        self.wake: list[WakeSignal] = []
        self.qdone: list[WakeSignal] = []
        self.rings: list[Ring] = []
        self.ctl: dict[str, np.ndarray] = {}
        self.query: dict[str, np.ndarray] = {}
        self.metrics: MetricArray | None = None
        self.locks = LockFile.open(os.path.join(params["data_dir"], "engine.locks"))

    # -- construction ------------------------------------------------------
    @classmethod
    def create(cls, params: dict) -> "Instance":
        inst = cls(params)
        try:
            inst._build(create=True)
        except BaseException:
            inst.close()
            inst.unlink()
            raise
        return inst

    @classmethod
    def attach(cls, name: str) -> "Instance":
        try:
            ctl = Segment.attach(object_name(name, "ctl"))
        except SegmentMissing:
            raise
        try:
            params = read_params(ctl.buf)
        finally:
            ctl.close()
        inst = cls(params)
        try:
            inst._build(create=False)
        except BaseException:
            inst.close()
            raise
        return inst

    def _segment(self, part: str, size: int, create: bool) -> Segment:
        name = object_name(self.name, part)
        seg = Segment.create(name, size) if create else Segment.attach(name)
        self.segments.append(seg)
        if seg.size < size:
            raise LayoutError(f"{name} is {seg.size} bytes, expected {size}")
        return seg

    def _build(self, create: bool) -> None:
        p = self.params
        layout = control_layout(p["slots"], p["max_spaces"], p["max_sessions"])
        ctl = self._segment("ctl", layout.size, create)
        if create:
            blob = json.dumps(p).encode()
            if len(blob) > PARAMS_BYTES:
                raise LayoutError("instance parameters too large for the control block")
            self.ctl = layout.views(ctl.buf, check=False)
            self.ctl["params"][: len(blob)] = np.frombuffer(blob, np.uint8)
            self.ctl["hdr"][H_PARAMS_LEN] = len(blob)
            layout.init(ctl.buf)
        else:
            self.ctl = layout.views(ctl.buf)
        offsets, total = ring_offsets(p)
        rseg = self._segment("rings", total, create)
        for slot in range(p["slots"]):
            for lane in range(len(LANES)):
                r = ring_id(slot, lane)
                self.rings.append(Ring(rseg.buf, offsets[r], ring_capacity(p, lane), p["dim"],
                                       CLAIM_SLOTS, self.locks, LOCK_RING_BASE + r, r, init=create))
        qlayout = query_layout(p)
        qseg = self._segment("query", qlayout.size, create)
        if create:
            self.query = qlayout.views(qseg.buf, check=False)
            qlayout.init(qseg.buf)
        else:
            self.query = qlayout.views(qseg.buf)
        mname = object_name(self.name, "metrics")
        if create:
            self.metrics = MetricArray.create(mname, p["slots"], p["max_spaces"])
        else:
            self.metrics = MetricArray.attach(mname)
        make = WakeSignal.create if create else WakeSignal.attach
        self.wake = [make(object_name(self.name, f"wake.{s}")) for s in range(p["slots"])]
        self.qdone = [make(object_name(self.name, f"qdone.{j}")) for j in range(p["query_slots"])]

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        self.rings = []
        self.ctl = {}
        self.query = {}
        for seg in self.segments:
            seg.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for sig in self.wake + self.qdone:
            sig.close()

    def unlink(self) -> None:
        """Remove every object (supervisor only); safe after a half-finished create."""
        from shm.segment import remove_instance_objects
        remove_instance_objects(self.name)

    # -- helpers -----------------------------------------------------------
    def ring(self, slot: int, lane: int) -> Ring:
        return self.rings[ring_id(slot, lane)]

    @property
    def hdr(self) -> np.ndarray:
        return self.ctl["hdr"]

    def space_name(self, index: int) -> str:
        raw = bytes(self.ctl["space_names"][index])
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    def space_names(self) -> dict[int, str]:
        n = min(int(self.hdr[H_SPACES]), self.params["max_spaces"])
        return {i: self.space_name(i) for i in range(n)}

    @property
    def metrics_lock_path(self) -> str:
        return os.path.join(self.params["data_dir"], "metrics.locks")

    def ring_bytes(self) -> int:
        return ring_offsets(self.params)[1]

    def slot_up(self, slot: int, now: float) -> bool:
        """The slot's worker is running and heartbeating (``now``: time.monotonic)."""
        state = int(self.ctl["slot_sup"][slot, SUP_STATE])
        beat = float(self.ctl["slot_live"][slot, LIVE_HEARTBEAT])
        return state == RUNNING and now - beat < ABSENT_AFTER_S

    def queued_by_lane(self) -> list[int]:
        out = [0, 0, 0]
        for r in self.rings:
            out[r.ring_id % len(LANES)] += r.queued()
        return out

    def capacity_by_lane(self) -> list[int]:
        return [ring_capacity(self.params, lane) * self.slots for lane in range(len(LANES))]

    def pressure(self) -> float:
        return sum(self.queued_by_lane()) / max(1, sum(self.capacity_by_lane()))


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_supervisor_pid(buf) -> int:
    """The supervisor pid of a control block whose parameters ``read_params`` accepted."""
    return int(np.frombuffer(buf, np.int64, 16, 64 + PARAMS_BYTES)[H_SUP_PID])


def read_params(buf) -> dict:
    """Read and bounds-check the JSON parameters at the start of a control block."""
    if len(buf) < 64 + PARAMS_BYTES + 128:
        raise LayoutError("control block too small")
    magic = int(np.frombuffer(buf, np.uint64, 1, 0)[0])
    from shm.layout import MAGIC
    if magic != MAGIC:
        raise LayoutError("control block not initialised (instance still starting?)")
    hdr = np.frombuffer(buf, np.int64, 16, 64 + PARAMS_BYTES)
    n = int(hdr[H_PARAMS_LEN])
    if not 0 < n <= PARAMS_BYTES:
        raise LayoutError(f"control block: parameter length {n} out of range")
    try:
        return json.loads(bytes(buf[64:64 + n]))
    except ValueError as exc:
        raise LayoutError(f"control block: parameters unreadable: {exc}") from None
