"""Metric array, writer, producer leases and the collector's aggregation.

Most tests simulate several processes in one by giving each "process" its own
row (STYLE §7); the lease tests fork real children.
"""

import os
import select
import signal
import uuid

import numpy as np
import pytest

from metrics import catalog as cat
from metrics.array import MetricArray
from metrics.collector import ArrayCollector
from metrics.errors import ArrayLayoutError, LabelError, RecordError, UnknownMetric
from metrics.lease import ProducerRowLease
from metrics.writer import LockedMetricWriter, MetricWriter
from shm.lock import LockFile
from shm.segment import SHM_DIR, object_name
from tests.harness import wait_for

P = cat.PREFIX
NAMES = {0: "default", 1: "alpha", 2: "beta"}


def scrape(array, names=NAMES, live=None):
    """{(sample name, frozenset(labels)): value} of one collect()."""
    out = {}
    for fam in ArrayCollector(array, lambda: names, live).collect():
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def val(samples, name, **labels):
    return samples[(P + name, frozenset((k, str(v)) for k, v in labels.items()))]


def unique_name(part="metrics"):
    return object_name(f"t{os.getpid()}x{uuid.uuid4().hex[:8]}", part)


def shm_path(name):
    return os.path.join(SHM_DIR, name.lstrip("/"))


# -- layout ---------------------------------------------------------------------

def test_layout_offsets_and_row_alignment():
    layout = MetricArray.layout(n_workers=4, max_spaces=8, producer_rows=5)
    assert layout.offsets == {"header": 64, "cells": 128}
    a = MetricArray.in_memory(4, 8, 5)
    rows, cpr = a.cells.shape
    assert rows == 3 + 4 + 5 + 1 and (cpr * 8) % 64 == 0
    assert cpr >= a.cellmap.used_cells
    assert list(a.header[:6]) == [4, 8, 5, rows, cpr, a.cellmap.fingerprint]


def test_row_assignment():
    r = MetricArray.rows(n_workers=4, producer_rows=3)
    assert (r.SUPERVISOR, r.GATEWAY, r.EXPORTER) == (0, 1, 2)
    assert [r.worker(i) for i in range(4)] == [3, 4, 5, 6]
    assert list(r.producers) == [7, 8, 9]
    assert r.overflow == 10 and r.total == 11
    with pytest.raises(ValueError, match="slot 4"):
        r.worker(4)


def test_attach_to_same_buffer_sees_writes():
    a = MetricArray.in_memory(2, 4)
    MetricWriter(a, a.row_map.worker(1)).inc("batches_processed_total", 7, worker_id=1)
    b = MetricArray(a._buf)
    assert b.cells[a.row_map.worker(1)].sum() == 7


@pytest.mark.parametrize("corrupt, message", [
    (lambda buf: buf.__setitem__(slice(0, 8), b"\0" * 8), "magic"),
    (lambda buf: buf.__setitem__(slice(8, 16), (99).to_bytes(8, "little")), "version"),
    (lambda buf: np.frombuffer(buf, np.int64, 8, 64).__setitem__(0, -3), "n_workers"),
    (lambda buf: np.frombuffer(buf, np.int64, 8, 64).__setitem__(1, 1 << 40), "max_spaces"),
    (lambda buf: np.frombuffer(buf, np.int64, 8, 64).__setitem__(3, 5), "rows"),
    (lambda buf: np.frombuffer(buf, np.int64, 8, 64).__setitem__(5, 12345), "catalog"),
    (lambda buf: np.frombuffer(buf, np.int64, 8, 64).__setitem__(0, 3), "rows"),
])
def test_attach_rejects_corrupt_bytes(corrupt, message):
    buf = bytearray(MetricArray.nbytes(2, 4))
    MetricArray.format(buf, 2, 4)
    corrupt(buf)
    with pytest.raises(ArrayLayoutError, match=message):
        MetricArray(buf)


def test_attach_rejects_short_buffer():
    buf = bytearray(MetricArray.nbytes(2, 4))
    MetricArray.format(buf, 2, 4)
    with pytest.raises(ArrayLayoutError, match="bytes"):
        MetricArray(buf[:len(buf) - 64])
    with pytest.raises(ArrayLayoutError):
        MetricArray(bytearray(32))


def test_segment_create_attach_close_unlink():
    name = unique_name()
    created = attached = None
    try:
        created = MetricArray.create(name, n_workers=2, max_spaces=4, producer_rows=2)
        assert os.stat(shm_path(name)).st_mode & 0o777 == 0o600
        attached = MetricArray.attach(name)
        w = MetricWriter(attached, attached.row_map.worker(0))
        w.inc("observations_total", 3, memory_space=1, priority="high")
        del w
        assert val(scrape(created), "observations_total", memory_space="alpha", priority="high") == 3
        attached.close()
        attached.close()  # idempotent
        assert os.path.exists(shm_path(name))  # close is not unlink
    finally:
        for arr in (attached, created):
            if arr is not None:
                arr.close()
        if created is not None:
            created.unlink()
    assert not os.path.exists(shm_path(name))


# -- writer -----------------------------------------------------------------------

def test_writer_inc_set_observe_and_errors():
    a = MetricArray.in_memory(2, 4)
    w = MetricWriter(a, a.row_map.SUPERVISOR)
    w.inc("worker_restarts_total", worker_id=1, reason="hung")
    w.inc("worker_restarts_total", 2, worker_id=1, reason="hung")
    assert w.value("worker_restarts_total", worker_id=1, reason="hung") == 3
    w.set("wal_size_bytes", 4, worker_id=1)
    w.inc("wal_size_bytes", -1, worker_id=1)  # gauges go both ways
    assert w.value("wal_size_bytes", worker_id=1) == 3
    with pytest.raises(RecordError, match="only goes up"):
        w.inc("worker_restarts_total", -1, worker_id=1, reason="hung")
    with pytest.raises(RecordError, match="only goes up"):
        w.inc("worker_restarts_total", float("nan"), worker_id=1, reason="hung")
    with pytest.raises(RecordError, match="set"):
        w.set("worker_restarts_total", 5, worker_id=1, reason="hung")
    with pytest.raises(RecordError, match="observe"):
        w.observe("wal_size_bytes", 1.0, worker_id=1)
    with pytest.raises(RecordError, match="inc"):
        w.inc("batch_size", worker_id=0)
    with pytest.raises(UnknownMetric, match="made_up_total"):
        w.inc("made_up_total")
    with pytest.raises(UnknownMetric, match="scrape time"):
        w.set("queue_depth", 1, priority="low")
    with pytest.raises(LabelError, match="'urgent'"):
        w.inc("observations_total", memory_space=0, priority="urgent")
    with pytest.raises(ValueError, match="row 99"):
        MetricWriter(a, 99)
    assert w.value("worker_restarts_total", worker_id=1, reason="hung") == 3


def test_observe_many_equals_loop_of_observe():
    a = MetricArray.in_memory(2, 4)
    rng = np.random.default_rng(7)
    bounds = list(cat.BY_NAME["observation_latency_seconds"].buckets)
    values = np.concatenate([rng.exponential(0.05, 997), bounds, [0.0, 7.5, 1e9]])
    many = MetricWriter(a, a.row_map.worker(0))
    loop = MetricWriter(a, a.row_map.worker(1))
    many.observe_many("observation_latency_seconds", values, memory_space=2)
    for v in values:
        loop.observe("observation_latency_seconds", float(v), memory_space=2)
    got, want = (w.value("observation_latency_seconds", memory_space=2) for w in (many, loop))
    assert got["buckets"] == want["buckets"]
    assert got["count"] == want["count"] == len(values)
    assert got["sum"] == pytest.approx(want["sum"], rel=1e-12)
    # Values equal to a bound land in that bucket (le is inclusive).
    ref = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1)
    assert got["buckets"] == ref.tolist()


def test_non_finite_observations_are_dropped():
    a = MetricArray.in_memory(2, 4)
    w = MetricWriter(a, a.row_map.worker(0))
    w.observe_many("batch_size", np.array([1.0, np.nan, 20.0, np.inf]), worker_id=0)
    w.observe("batch_size", float("nan"), worker_id=0)
    w.observe_many("batch_size", np.array([]), worker_id=0)
    h = w.value("batch_size", worker_id=0)
    assert h["count"] == 2 and h["sum"] == 21.0


def test_restarted_writer_continues_the_row():
    a = MetricArray.in_memory(2, 4)
    row = a.row_map.worker(1)
    MetricWriter(a, row).inc("batches_processed_total", 5, worker_id=1)
    # "Restart": a new process attaches and writes the same slot's row.
    b = MetricArray(a._buf)
    MetricWriter(b, row).inc("batches_processed_total", 2, worker_id=1)
    assert val(scrape(b), "batches_processed_total", worker_id=1) == 7


# -- aggregation (collector over the array) ----------------------------------------

def test_rows_of_several_processes_sum():
    a = MetricArray.in_memory(3, 4, producer_rows=2)
    rows = a.row_map
    writers = [MetricWriter(a, r) for r in [rows.worker(0), rows.worker(2), *rows.producers]]
    for i, w in enumerate(writers):
        w.inc("observations_total", 10 * (i + 1), memory_space=0, priority="normal")
        w.inc("observations_rejected_total", i, memory_space=1, reason="over_capacity")
        w.set("index_vectors", 100 + i, memory_space=2)
    s = scrape(a)
    assert val(s, "observations_total", memory_space="default", priority="normal") == 100
    assert val(s, "observations_rejected_total", memory_space="alpha", reason="over_capacity") == 6
    assert val(s, "index_vectors", memory_space="beta") == 406  # sum gauge


def test_max_gauges_take_the_max_across_rows():
    a = MetricArray.in_memory(2, 4)
    MetricWriter(a, a.row_map.worker(1)).set("worker_utilization_ratio", 0.25, worker_id=1)
    MetricWriter(a, a.row_map.SUPERVISOR).set("worker_up", 1, worker_id=1)
    MetricWriter(a, a.row_map.EXPORTER).set("worker_utilization_ratio", 0.75, worker_id=1)
    MetricWriter(a, a.row_map.GATEWAY).set("worker_up", 1, worker_id=1)
    s = scrape(a)
    assert val(s, "worker_utilization_ratio", worker_id=1) == 0.75
    assert val(s, "worker_up", worker_id=1) == 1  # max, not 2
    assert val(s, "worker_up", worker_id=0) == 0


def test_histograms_are_cumulative_with_inf_equal_count():
    a = MetricArray.in_memory(2, 4)
    rng = np.random.default_rng(3)
    v0, v1 = rng.exponential(0.1, 500), rng.exponential(0.5, 300)
    MetricWriter(a, a.row_map.worker(0)).observe_many("observation_latency_seconds", v0,
                                                      memory_space=0)
    MetricWriter(a, a.row_map.worker(1)).observe_many("observation_latency_seconds", v1,
                                                      memory_space=0)
    s = scrape(a)
    allv = np.concatenate([v0, v1])
    bounds = cat.BY_NAME["observation_latency_seconds"].buckets
    for b in bounds:
        le = f"{b}" if b < 1 else f"{b:.1f}"
        got = val(s, "observation_latency_seconds_bucket", memory_space="default", le=le)
        assert got == np.count_nonzero(allv <= b), le
    inf = val(s, "observation_latency_seconds_bucket", memory_space="default", le="+Inf")
    assert inf == val(s, "observation_latency_seconds_count", memory_space="default") == 800
    assert val(s, "observation_latency_seconds_sum", memory_space="default") == \
        pytest.approx(allv.sum(), rel=1e-12)


def test_out_of_range_space_folds_into_other():
    a = MetricArray.in_memory(2, max_spaces=3)
    w = MetricWriter(a, a.row_map.worker(0))
    w.inc("observations_total", 4, memory_space=3, priority="low")
    w.inc("observations_total", 5, memory_space=1_000_000, priority="low")
    w.observe("recall_latency_seconds", 0.002, memory_space=77)
    s = scrape(a)
    assert val(s, "observations_total", memory_space="_other", priority="low") == 9
    assert val(s, "recall_latency_seconds_count", memory_space="_other") == 1
    spaces = {dict(k[1]).get("memory_space") for k in s if k[0] == P + "observations_total"}
    assert spaces == {"default", "alpha", "beta", "_other"}


def test_every_known_series_exists_at_zero():
    a = MetricArray.in_memory(2, 4)
    s = scrape(a, names={0: "default", 3: "gamma", 1: ""})  # "" = unknown: not exported
    for prio in cat.DOMAINS["priority"]:
        for space in ("default", "gamma", "_other"):
            assert val(s, "observations_total", memory_space=space, priority=prio) == 0
    for reason in cat.DOMAINS["restart_reason"]:
        assert val(s, "worker_restarts_total", worker_id=1, reason=reason) == 0
    assert val(s, "batch_size_bucket", worker_id=0, le="+Inf") == 0
    assert val(s, "backpressure_activations_total", level="critical") == 0
    spaces = {dict(k[1]).get("memory_space") for k in s if k[0] == P + "index_vectors"}
    assert spaces == {"default", "gamma", "_other"}


def test_space_names_callback_edge_cases():
    a = MetricArray.in_memory(2, 4)
    w = MetricWriter(a, a.row_map.worker(0))
    w.inc("recall_queries_total", 2, memory_space=0)
    w.inc("recall_queries_total", 3, memory_space=1)
    # Two indices with one name are merged; out-of-range indices are ignored.
    s = scrape(a, names={0: "same", 1: "same", 9: "ghost"})
    assert val(s, "recall_queries_total", memory_space="same") == 5
    assert (P + "recall_queries_total", frozenset({("memory_space", "ghost")})) not in s

    def broken():
        raise RuntimeError("engine not ready")
    fams = {f.name: f for f in ArrayCollector(a, broken).collect()}
    assert [s.labels for s in fams[P + "recall_queries"].samples] == [{"memory_space": "_other"}]


def test_live_gauges_from_callback():
    a = MetricArray.in_memory(2, 4)
    live = {
        "queue_depth": [({"priority": "high"}, 3), ({"priority": "low"}, 9),
                        ({"priority": "bogus"}, 1), ({"lane": "x"}, 1)],
        "backpressure_state": [({}, 2)],
    }
    s = scrape(a, live=lambda: live)
    assert val(s, "queue_depth", priority="high") == 3
    assert val(s, "queue_depth", priority="low") == 9
    assert val(s, "backpressure_state") == 2
    assert sum(1 for k in s if k[0] == P + "queue_depth") == 2  # bad entries dropped

    def broken():
        raise RuntimeError("control block gone")
    s = scrape(a, live=broken)  # the array's series still come through
    assert val(s, "batches_processed_total", worker_id=0) == 0
    assert not any(k[0] == P + "queue_depth" for k in s)


# -- producer leases ---------------------------------------------------------------

def test_leases_take_distinct_rows_then_overflow(tmp_path):
    a = MetricArray.in_memory(2, 4, producer_rows=2)
    path = str(tmp_path / "metrics.lock")
    l1, l2 = ProducerRowLease(a, path), ProducerRowLease(a, path)
    l3 = ProducerRowLease(a, path)
    try:
        assert {l1.row, l2.row} == set(a.row_map.producers)
        assert not l1.shared and not l2.shared
        assert l3.shared and l3.row == a.row_map.overflow
        assert isinstance(l3.writer, LockedMetricWriter)
        for lease in (l1, l2, l3):
            lease.writer.inc("observations_total", 1, memory_space=0, priority="high")
            lease.writer.observe_many("queue_wait_time_seconds", [0.002, 0.2], priority="high")
        s = scrape(a)
        assert val(s, "observations_total", memory_space="default", priority="high") == 3
        assert val(s, "queue_wait_time_seconds_count", priority="high") == 6
        l1.release()
        with ProducerRowLease(a, path) as l4:
            assert l4.row == l1.row and not l4.shared
            # The new holder continues the row's counters.
            assert l4.writer.value("observations_total", memory_space=0, priority="high") == 1
    finally:
        for lease in (l1, l2, l3):
            lease.release()


def _fork_lease_holder(seg_name, lock_path):
    """Fork a child that leases a row, records on it and waits to be killed.
    Returns (pid, row)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(r)
            arr = MetricArray.attach(seg_name)
            lease = ProducerRowLease(arr, lock_path)
            lease.writer.inc("observations_total", 5, memory_space=0, priority="low")
            os.write(w, f"{lease.row}\n".encode())
            while True:
                signal.pause()
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        assert ready, "child did not report its row"
        return pid, int(os.read(r, 64).decode())
    finally:
        os.close(r)


def test_lease_held_by_child_is_freed_by_kill_9(tmp_path):
    name = unique_name()
    lock_path = str(tmp_path / "metrics.lock")
    arr = MetricArray.create(name, n_workers=2, max_spaces=4, producer_rows=3)
    pid = None
    try:
        pid, child_row = _fork_lease_holder(name, lock_path)
        assert child_row in arr.row_map.producers
        mine = ProducerRowLease(arr, lock_path)
        assert mine.row != child_row and not mine.shared

        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pid = None
        lock = LockFile.open(lock_path)
        wait_for(lambda: lock.try_acquire(child_row), 10, interval=0.01,
                 message="the row lock released after kill -9")
        lock.release(child_row)

        again = ProducerRowLease(arr, lock_path)
        assert again.row == child_row
        # Counters of the dead producer's row continue, they never go down.
        again.writer.inc("observations_total", 1, memory_space=0, priority="low")
        assert val(scrape(arr), "observations_total", memory_space="default", priority="low") == 6
        again.release()
        mine.release()
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        arr.close()
        arr.unlink()
    assert not os.path.exists(shm_path(name))


def test_lease_uses_overflow_when_children_hold_every_row(tmp_path):
    name = unique_name()
    lock_path = str(tmp_path / "metrics.lock")
    arr = MetricArray.create(name, n_workers=1, max_spaces=2, producer_rows=2)
    pids = []
    try:
        rows = set()
        for _ in range(2):
            pid, row = _fork_lease_holder(name, lock_path)
            pids.append(pid)
            rows.add(row)
        assert rows == set(arr.row_map.producers)
        lease = ProducerRowLease(arr, lock_path)
        assert lease.shared and lease.row == arr.row_map.overflow
        lease.writer.inc("observations_total", 1, memory_space=0, priority="low")
        assert val(scrape(arr, names={0: "default"}), "observations_total",
                   memory_space="default", priority="low") == 11
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        arr.close()
        arr.unlink()
    assert not os.path.exists(shm_path(name))
