"""Mapped views of every shared object of one running instance, by role.

``Instance.create`` is the supervisor's (and in-process tests'); every other
process uses ``Instance.attach(name, role, slot)``. ``close`` unmaps;
``unlink`` (creator only) removes. What lives where, and who writes what:
``engine.control.layouts`` (objects and the control block's fields) and
``engine.control.records`` (the typed header and per-slot records).
"""

from __future__ import annotations

import copy
import os

import numpy as np

from engine.config import Params
from engine.control.layouts import (ABSENT_AFTER_S, CLAIM_SLOTS, HEADER_CELLS, LANES, LOCK_IDS, LOCK_RING_BASE,
                                    PARAMS_BYTES, control_layout, id_table_bytes, id_table_capacity, partition_rows,
                                    query_layout, ring_capacity, ring_id, ring_offsets)
from engine.control.records import (GATEWAY, PRODUCER, READER, RUNNING, SUPERVISOR, WORKER, Header, LiveRecord,
                                    SupervisorRecord)
from metrics.array import MetricArray
from shm.errors import LayoutError
from shm.idtable import IdTable
from shm.layout import MAGIC
from shm.lock import LockFile
from shm.ring import Ring
from shm.segment import Segment, WakeSignal, object_name

# How long each role waits for a ring lock (None: forever). A lock is held
# for microseconds, unless its holder was stopped (SIGSTOP) inside it: then a
# worker moves on to other work and keeps beating and answering recalls, a
# producer is told ``over_capacity`` after a short wait, and the supervisor
# skips what it wanted this tick. Nothing waits without bound.
RING_LOCK_TIMEOUT_S = {WORKER: 0.02, PRODUCER: 0.5, GATEWAY: 0.5, SUPERVISOR: 2.0, READER: 2.0}
CONTROL_LOCK_TIMEOUT_S = 0.5
# The identity table's lock is held for a batch's table update (well under a
# millisecond); a writer that meets it taken this long tries again later.
IDS_LOCK_TIMEOUT_S = 2.0

# Byte offsets inside the control block of what must be read before its
# sizes are known (the parameters say how many slots, spaces, sessions).
_FIXED = control_layout(1, 1, 1)
PARAMS_OFFSET = _FIXED.offsets["params"]
HEADER_OFFSET = _FIXED.offsets["hdr"]


class Instance:
    """Every mapping of an instance, seen by one role (``engine.control.records``).

    ``role``/``slot`` decide which record cells this process may write;
    ``as_role`` gives another role's view of the same mappings (in-process
    tests and benchmarks that play several processes)."""

    def __init__(self, params: Params, role: str = SUPERVISOR, slot: int | None = None):
        self.params = params
        self.name = params.name
        self.slots = params.slots
        self.dim = params.dim
        self.role = role
        self.slot = slot
        self.owner = True  # False for an ``as_role`` view: closing it unmaps nothing
        self.segments: list[Segment] = []
        self.wake: list[WakeSignal] = []
        self.qdone: list[WakeSignal] = []
        self.rings: list[Ring] = []
        self.ctl: dict[str, np.ndarray] = {}
        self.query: dict[str, np.ndarray] = {}
        self.metrics: MetricArray | None = None
        self.ids: IdTable | None = None
        self.locks = LockFile.open(os.path.join(params.data_dir, "engine.locks"))

    # -- construction ------------------------------------------------------
    @classmethod
    def create(cls, params: Params) -> "Instance":
        inst = cls(params, SUPERVISOR)
        try:
            inst._build(create=True)
        except BaseException:
            inst.close()
            inst.unlink()
            raise
        return inst

    @classmethod
    def attach(cls, name: str, role: str, slot: int | None = None) -> "Instance":
        ctl = Segment.attach(object_name(name, "ctl"))
        try:
            params = read_params(ctl.buf)
        finally:
            ctl.close()
        inst = cls(params, role, slot)
        try:
            inst._build(create=False)
        except BaseException:
            inst.close()
            raise
        return inst

    def as_role(self, role: str, slot: int | None = None) -> "Instance":
        view = copy.copy(self)
        view.role, view.slot, view.owner = role, slot, False
        return view

    def _segment(self, part: str, size: int, create: bool) -> Segment:
        name = object_name(self.name, part)
        seg = Segment.create(name, size) if create else Segment.attach(name)
        self.segments.append(seg)
        if seg.size < size:
            raise LayoutError(f"{name} is {seg.size} bytes, expected {size}")
        return seg

    def _build(self, create: bool) -> None:
        p = self.params
        layout = control_layout(p.slots, p.max_spaces, p.max_sessions, partition_rows(p))
        ctl = self._segment("ctl", layout.size, create)
        if create:
            blob = p.to_json()
            if len(blob) > PARAMS_BYTES:
                raise LayoutError("instance parameters too large for the control block")
            self.ctl = layout.views(ctl.buf, check=False)
            self.ctl["params"][: len(blob)] = np.frombuffer(blob, np.uint8)
            self.header.params_len = len(blob)
            layout.init(ctl.buf)
        else:
            self.ctl = layout.views(ctl.buf)
        offsets, total = ring_offsets(p)
        rseg = self._segment("rings", total, create)
        for slot in range(p.slots):
            for lane in range(len(LANES)):
                r = ring_id(slot, lane)
                self.rings.append(Ring(rseg.buf, offsets[r], ring_capacity(p, lane), p.dim,
                                       CLAIM_SLOTS, self.locks, LOCK_RING_BASE + r, r, init=create,
                                       lock_timeout=RING_LOCK_TIMEOUT_S.get(self.role)))
        qlayout = query_layout(p)
        qseg = self._segment("query", qlayout.size, create)
        if create:
            self.query = qlayout.views(qseg.buf, check=False)
            qlayout.init(qseg.buf)
        else:
            self.query = qlayout.views(qseg.buf)
        iseg = self._segment("ids", id_table_bytes(p), create)
        self.ids = IdTable(iseg.buf, id_table_capacity(p), p.slots, p.max_spaces, self.locks, LOCK_IDS,
                           init=create, lock_timeout=IDS_LOCK_TIMEOUT_S)
        mname = object_name(self.name, "metrics")
        if create:
            self.metrics = MetricArray.create(mname, p.slots, p.max_spaces)
        else:
            self.metrics = MetricArray.attach(mname)
        make = WakeSignal.create if create else WakeSignal.attach
        self.wake = [make(object_name(self.name, f"wake.{s}")) for s in range(p.slots)]
        self.qdone = [make(object_name(self.name, f"qdone.{j}")) for j in range(p.query_slots)]

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        if not self.owner:
            return
        self.rings = []
        self.ids = None
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

    # -- typed records -------------------------------------------------------
    @property
    def header(self) -> Header:
        return Header(self.ctl["hdr"], self.role)

    def sup(self, slot: int) -> SupervisorRecord:
        """The supervisor's record of ``slot``: writable by the supervisor only."""
        return SupervisorRecord(self.ctl["slot_sup"][slot], self.role, writable=self.role == SUPERVISOR)

    def live(self, slot: int) -> LiveRecord:
        """The live record of ``slot``: writable by that slot's worker only."""
        mine = self.role == WORKER and self.slot == slot
        return LiveRecord(self.ctl["slot_live"][slot], self.role, writable=mine)

    def sup_column(self, cell: str) -> np.ndarray:
        return SupervisorRecord.column(self.ctl["slot_sup"], cell)

    def live_column(self, cell: str) -> np.ndarray:
        return LiveRecord.column(self.ctl["slot_live"], cell)

    @property
    def shard_counts(self) -> np.ndarray:
        """Vectors per (slot, space), read-only; a worker writes its row via ``own_shard_counts``."""
        view = self.ctl["shard_counts"].view()
        view.flags.writeable = False
        return view

    def own_shard_counts(self) -> np.ndarray:
        if self.role != WORKER or self.slot is None:
            raise LayoutError(f"{self.role} owns no row of shard_counts")
        return self.ctl["shard_counts"][self.slot]

    @property
    def session_rows(self) -> np.ndarray:
        """The session table's rows (``engine.control.sessions``); written by the gateway only."""
        return self.ctl["sessions"]

    @property
    def partition_rows(self) -> np.ndarray:
        """Cluster mode's partition table (``engine.control.partitions``); written by the follower only."""
        return self.ctl["partitions"]

    # -- helpers -----------------------------------------------------------
    def ring(self, slot: int, lane: int) -> Ring:
        return self.rings[ring_id(slot, lane)]

    def space_name(self, index: int) -> str:
        raw = bytes(self.ctl["space_names"][index])
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    def space_names(self) -> dict[int, str]:
        n = min(self.header.spaces, self.params.max_spaces)
        return {i: self.space_name(i) for i in range(n)}

    @property
    def metrics_lock_path(self) -> str:
        return os.path.join(self.params.data_dir, "metrics.locks")

    def ring_bytes(self) -> int:
        return ring_offsets(self.params)[1]

    def slot_up(self, slot: int, now: float) -> bool:
        """The slot's worker is running and heartbeating (``now``: time.monotonic)."""
        return self.sup(slot).state == RUNNING and now - self.live(slot).heartbeat < ABSENT_AFTER_S

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


def read_header(buf) -> Header:
    """The header of a control block whose parameters ``read_params`` accepted (read-only)."""
    return Header(np.frombuffer(buf, np.int64, HEADER_CELLS, HEADER_OFFSET), "reader", writable=False)


def read_params(buf) -> Params:
    """Read and bounds-check the JSON parameters at the start of a control block."""
    if len(buf) < HEADER_OFFSET + HEADER_CELLS * 8:
        raise LayoutError("control block too small")
    if int(np.frombuffer(buf, np.uint64, 1, 0)[0]) != MAGIC:
        raise LayoutError("control block not initialised (instance still starting?)")
    n = read_header(buf).params_len
    if not 0 < n <= PARAMS_BYTES:
        raise LayoutError(f"control block: parameter length {n} out of range")
    try:
        return Params.from_json(bytes(buf[PARAMS_OFFSET:PARAMS_OFFSET + n]))
    except ValueError as exc:
        raise LayoutError(f"control block: parameters unreadable: {exc}") from None


