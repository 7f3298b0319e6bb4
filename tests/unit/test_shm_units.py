"""Unit tests of the shm/ package: layouts, rings under corruption, locks
across threads and real processes, named segments and wake-up signals.

Real-process tests fork a child, talk to it over a pipe and poll a condition
against a deadline (never a fixed sleep before an assert); children are
killed and joined in ``finally``. Every POSIX object is named
``/engram.test-<pid>-<uuid>.<part>`` and unlinked by a fixture finalizer; an
autouse fixture fails any test that leaves one behind in /dev/shm.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import threading
import time
import uuid

import numpy as np
import posix_ipc
import pytest

from shm.errors import LayoutError, SegmentExists, SegmentMissing, ShmError
from shm.layout import ALIGN, MAGIC, Field, Layout
from shm.lock import InstanceLock, LockFile
from shm.ring import CLAIM_BYTES, COMMITTED, HEADER_BYTES, Claim, Ring, ring_bytes
from shm.segment import (SHM_DIR, Segment, WakeSignal, instance_objects, object_name,
                         remove_instance_objects, unlink_quietly, unlink_semaphore_quietly)
from tests.harness import wait_for

FORK = multiprocessing.get_context("fork")
TEST_PREFIX = f"test-{os.getpid()}-"
DEADLINE_S = 10.0


# ---------------------------------------------------------------- helpers
def recv(conn, what: str, timeout: float = DEADLINE_S):
    """Next message from a child, or fail at the deadline."""
    if not conn.poll(timeout):
        pytest.fail(f"timed out after {timeout}s waiting for the child to report {what}")
    return conn.recv()


def stop(proc) -> None:
    """Kill and reap a child, whatever state it is in."""
    if proc.pid is not None and proc.is_alive():
        proc.kill()
    proc.join(DEADLINE_S)


def leftovers() -> list[str]:
    marks = (f"engram.{TEST_PREFIX}", f"sem.engram.{TEST_PREFIX}")
    try:
        return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(marks))
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True, scope="module")
def no_leftovers_after_module():
    yield
    left = leftovers()
    for entry in left:  # remove them anyway, so a failure does not pollute the machine
        os.unlink(os.path.join(SHM_DIR, entry))
    assert not left, f"objects left in {SHM_DIR} after the module: {left}"


@pytest.fixture(autouse=True)
def no_leftovers_after_test():
    yield
    left = leftovers()
    for entry in left:
        os.unlink(os.path.join(SHM_DIR, entry))
    assert not left, f"test left objects in {SHM_DIR}: {left}"


class Names:
    """Unique POSIX names for one test; every name handed out is unlinked at teardown."""

    def __init__(self):
        self.instance = f"{TEST_PREFIX}{uuid.uuid4().hex[:12]}"
        self._names: list[str] = []
        self.segments: list[Segment] = []
        self.signals: list[WakeSignal] = []

    def name(self, part: str = "x", instance: str | None = None) -> str:
        n = object_name(instance or self.instance, part)
        self._names.append(n)
        return n

    def other_instance(self) -> str:
        return f"{TEST_PREFIX}{uuid.uuid4().hex[:12]}"

    def cleanup(self) -> None:
        for seg in self.segments:
            seg.close()
        for sig in self.signals:
            sig.close()
        for n in self._names:
            unlink_quietly(n)
            unlink_semaphore_quietly(n)


@pytest.fixture
def names():
    ns = Names()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture
def lockfile(tmp_path):
    lf = LockFile(str(tmp_path / "locks"))
    try:
        yield lf
    finally:
        # LockFile has no close(); closing its (private) descriptor drops our locks.
        os.close(lf._fd)


def make_ring(lock: LockFile, capacity=8, dim=2, claim_slots=4, offset=0, spare=0):
    buf = bytearray(offset + ring_bytes(capacity, dim, claim_slots) + spare)
    mv = memoryview(buf)
    return Ring(mv, offset, capacity, dim, claim_slots, lock, 0, init=True), buf, mv


def header(mv, offset=0) -> np.ndarray:
    """head, claimed, tail, capacity, dim (u64) as documented in shm/ring.py."""
    return np.frombuffer(mv, np.uint64, 8, offset)


def claim_table(mv, claim_slots, offset=0) -> np.ndarray:
    """start, count, claimer, state (i64) per entry, as documented in shm/ring.py."""
    return np.frombuffer(mv, np.int64, 4 * claim_slots, offset + HEADER_BYTES).reshape(claim_slots, 4)


def fill(ring: Ring, first_id: int, n: int, space=1, now=100.0) -> int:
    ids = np.arange(first_id, first_id + n, dtype=np.uint64)
    vecs = (ids[:, None].astype(np.float32) + np.arange(ring.dim, dtype=np.float32))
    return ring.enqueue(ids, vecs, space, now)


# ---------------------------------------------------------------- layout
FIELDS = [Field("a", "u8", (3,)), Field("b", "f4", (5, 2)), Field("c", "i2", ()),
          Field("d", "u1", (1,)), Field("e", "f8", (9,))]


def test_layout_offsets_are_aligned_and_disjoint():
    lay = Layout(7, FIELDS)
    assert lay.offsets == {"a": 64, "b": 128, "c": 192, "d": 256, "e": 320}
    end = ALIGN  # the preamble
    for f in FIELDS:
        off = lay.offsets[f.name]
        assert off % ALIGN == 0 and off >= end, f
        end = off + f.nbytes
    assert lay.size % ALIGN == 0 and lay.size >= end
    assert lay.size == 448  # 320 + 72 bytes, rounded up


def test_layout_views_round_trip():
    lay = Layout(7, FIELDS)
    buf = bytearray(lay.size + 13)  # a larger buffer is fine
    lay.init(buf)
    v = lay.views(buf)
    for f in FIELDS:
        assert v[f.name].shape == f.shape and v[f.name].dtype == np.dtype(f.dtype)
    v["a"][:] = [1, 2**63, 3]
    v["b"][:] = np.arange(10, dtype=np.float32).reshape(5, 2) / 4
    v["c"][()] = -7
    v["d"][0] = 255
    v["e"][:] = np.linspace(-1, 1, 9)
    again = lay.views(buf)
    for f in FIELDS:
        assert np.array_equal(again[f.name], v[f.name]), f.name
        raw = np.frombuffer(bytes(buf[lay.offsets[f.name]:lay.offsets[f.name] + f.nbytes]), f.dtype)
        assert np.array_equal(raw.reshape(f.shape), v[f.name]), f.name
    assert int(again["a"][1]) == 2**63 and int(again["c"]) == -7
    magic, version = np.frombuffer(bytes(buf[:16]), np.uint64)
    assert int(magic) == MAGIC and int(version) == 7


def test_layout_rejects_bad_magic_version_and_size():
    lay = Layout(7, FIELDS)
    buf = bytearray(lay.size)
    with pytest.raises(LayoutError, match="magic"):
        lay.views(buf)  # never initialised
    lay.init(buf)
    lay.views(buf)
    with pytest.raises(LayoutError, match="version"):
        Layout(8, FIELDS).views(buf)
    buf[3] ^= 0xFF
    with pytest.raises(LayoutError, match="magic"):
        lay.views(buf)
    assert lay.views(buf, check=False)["e"].shape == (9,)
    with pytest.raises(LayoutError, match="bytes"):
        lay.views(bytearray(lay.size - 1), check=False)
    small = bytearray(lay.size - 1)
    with pytest.raises(LayoutError):
        lay.views(small)
    assert issubclass(LayoutError, ShmError)


def test_layout_describe_mentions_every_field():
    lay = Layout(7, FIELDS)
    lines = lay.describe().splitlines()
    assert "preamble" in lines[1]
    for f in FIELDS:
        row = [ln for ln in lines if f" {f.name} {f.dtype}" in ln]
        assert len(row) == 1, (f, lines)
        cols = row[0].split()
        assert int(cols[0]) == lay.offsets[f.name] and int(cols[1]) == f.nbytes
        assert str(list(f.shape)) in row[0]


# ---------------------------------------------------------------- ring
CORRUPT_COUNTERS = {
    "head<tail": (2, 2, 5),
    "claimed>head": (3, 5, 0),
    "claimed<tail": (6, 1, 3),
    "head-tail>capacity": (8 + 5, 8 + 5, 0),
    "huge head": (2**63, 2**63, 0),
}


@pytest.mark.parametrize("counters", CORRUPT_COUNTERS.values(), ids=CORRUPT_COUNTERS.keys())
@pytest.mark.parametrize("op", ["enqueue", "claim", "claim_many", "scan", "claims_of", "commit"])
def test_ring_corrupt_counters_raise_layout_error(lockfile, counters, op):
    ring, buf, mv = make_ring(lockfile, capacity=8, offset=64, spare=64)
    assert fill(ring, 1, 3) == 3
    held = ring.claim(1, claimer=1)
    header(mv, 64)[:3] = counters
    before = bytes(buf)
    with pytest.raises(LayoutError, match="corrupt counters"):
        if op == "enqueue":
            fill(ring, 10, 4)
        elif op == "claim":
            ring.claim(4, claimer=2)
        elif op == "claim_many":
            ring.claim_many(8, 2, claimer=2)
        elif op == "scan":
            ring.scan(1)
        elif op == "claims_of":
            ring.claims_of(1)
        else:
            ring.commit(held)
    if op != "commit":  # commit marks the entry before it checks the counters
        assert bytes(buf) == before, "a refused operation wrote to the ring"
    assert lockfile.try_acquire(0), "the ring lock was not released after the error"
    lockfile.release(0)


def test_ring_attach_checks_geometry(lockfile):
    buf = bytearray(ring_bytes(16, 4, 4))
    mv = memoryview(buf)
    Ring(mv, 0, 8, 2, 4, lockfile, 0, init=True)
    Ring(mv, 0, 8, 2, 4, lockfile, 0)  # same geometry attaches
    with pytest.raises(LayoutError, match="capacity"):
        Ring(mv, 0, 7, 2, 4, lockfile, 0)
    with pytest.raises(LayoutError, match="dim"):
        Ring(mv, 0, 8, 3, 4, lockfile, 0)
    with pytest.raises(LayoutError, match="too small"):
        Ring(memoryview(bytearray(ring_bytes(8, 2, 4) - 1)), 0, 8, 2, 4, lockfile, 0, init=True)
    with pytest.raises(LayoutError, match="aligned"):
        Ring(mv, 32, 8, 2, 4, lockfile, 0, init=True)


def test_ring_bytes_is_aligned_and_covers_the_arrays(lockfile):
    for cap, dim, k in [(1, 1, 1), (3, 5, 2), (17, 3, 6), (100, 8, 7)]:
        n = ring_bytes(cap, dim, k)
        assert n % 64 == 0
        ring, buf, _ = make_ring(lockfile, cap, dim, k, offset=128)
        base = np.frombuffer(buf, np.uint8).ctypes.data
        for arr in (ring.ids, ring.spaces, ring.times, ring.vectors):
            start = arr.ctypes.data - base
            assert start % 64 == 0
            assert 128 + HEADER_BYTES + CLAIM_BYTES * k <= start and start + arr.nbytes <= 128 + n


def test_ring_commit_of_a_claim_not_held(lockfile):
    ring, _, _ = make_ring(lockfile)
    with pytest.raises(LayoutError, match="not held"):
        ring.commit(Claim(0, 0, 0, 1, 1))  # nothing claimed yet
    fill(ring, 1, 6)
    a = ring.claim(2, claimer=1)
    b = ring.claim(2, claimer=1)
    with pytest.raises(LayoutError, match="not held"):
        ring.commit(Claim(0, b.entry, b.start + 1, b.count, 1))  # wrong start
    ring.commit(b)  # out of order: tail stays
    assert ring.tail == 0
    with pytest.raises(LayoutError, match="not held"):
        ring.commit(b)  # committed, not yet passed by tail
    ring.commit(a)
    assert ring.tail == 4
    with pytest.raises(LayoutError, match="not held"):
        ring.commit(a)  # entry already freed
    c = ring.claim(2, claimer=1)
    assert c.entry in (a.entry, b.entry)
    stale = a if a.entry == c.entry else b
    with pytest.raises(LayoutError, match="not held"):
        ring.commit(stale)  # entry reused by another claim
    ring.commit(c)
    assert (ring.head, ring.claimed, ring.tail) == (6, 6, 6)


CORRUPT_ENTRIES = {
    "start beyond claimed": lambda t, c: (c.start + 50, c.count),
    "start before tail": lambda t, c: (t - 1, c.count),
    "count past claimed": lambda t, c: (c.start, c.count + 3),
    "count over capacity": lambda t, c: (c.start, 1000),
    "negative start": lambda t, c: (-5, c.count),
}


@pytest.mark.parametrize("corrupt", CORRUPT_ENTRIES.values(), ids=CORRUPT_ENTRIES.keys())
def test_ring_corrupt_claim_entry_makes_claims_of_raise(lockfile, corrupt):
    ring, _, mv = make_ring(lockfile, capacity=8, claim_slots=4)
    fill(ring, 1, 8)
    first = ring.claim(3, claimer=1)
    ring.commit(first)  # tail = 3
    c = ring.claim(2, claimer=7)
    ring.claim(1, claimer=8)
    assert [x.start for x in ring.claims_of(7)] == [c.start]
    table = claim_table(mv, 4)
    table[c.entry, 0], table[c.entry, 1] = corrupt(ring.tail, c)
    with pytest.raises(LayoutError, match="out of range"):
        ring.claims_of(7)
    assert [x.claimer for x in ring.claims_of(8)] == [8]  # other claimers unaffected


def test_ring_view_refuses_a_wrapping_claim(lockfile):
    ring, _, _ = make_ring(lockfile, capacity=8)
    with pytest.raises(LayoutError):
        ring.view(Claim(0, 0, 6, 4, 1))  # slots 6..9 would wrap
    with pytest.raises(LayoutError):
        ring.view(Claim(0, 0, 3, 0, 1))


def test_claim_at_the_wrap_takes_only_what_it_returns(lockfile):
    """Regression (fixed in fbec2e1): ``claim`` used to be ``claim_many`` and
    returned only ``claims[0]``; when the pending range crossed the end of the
    ring a second, hidden claim was recorded and ``claimed`` advanced over it,
    so ``tail`` stalled before records nobody would commit."""
    ring, _, _ = make_ring(lockfile, capacity=8, claim_slots=2)
    assert fill(ring, 1, 7) == 7
    ring.commit(ring.claim(7, claimer=0))  # tail = claimed = head = 7
    assert fill(ring, 8, 2) == 2  # positions 7 (slot 7) and 8 (slot 0)
    got = ring.claim(2, claimer=0)
    assert (got.start, got.count) == (7, 1)  # cannot wrap: one record
    assert ring.claimed == got.start + got.count, (
        f"claim() returned {got} but advanced 'claimed' to {ring.claimed}: "
        f"hidden claims {[c for c in ring.claims_of(0) if c.entry != got.entry]}")


def test_claim_many_limits(lockfile):
    ring, _, _ = make_ring(lockfile, capacity=8, claim_slots=3)
    fill(ring, 1, 6)
    ring.commit(ring.claim(6, claimer=0))  # tail = 6
    fill(ring, 7, 8)  # positions 6..13: slots 6, 7, then 0..5
    assert ring.claim_many(8, 8, claimer=1, max_claims=0) == []
    got = ring.claim_many(8, 3, claimer=1)
    assert [(c.start, c.count) for c in got] == [(6, 2), (8, 3), (11, 3)]  # cut at the wrap
    assert ring.claim_many(8, 3, claimer=1) == []  # claim table full
    assert ring.depth() == 0 and ring.claimed == 14
    for c in reversed(got):
        ring.commit(c)
    assert ring.tail == 14 and ring.queued() == 0


def test_attach_checks_claim_slots(lockfile):
    """Attaching with another ``claim_slots`` would put ids/space/time/vectors
    at other offsets (claim-table bytes read as ids): it must be refused."""
    buf = bytearray(ring_bytes(8, 2, 4) + 256)
    mv = memoryview(buf)
    ring = Ring(mv, 0, 8, 2, 4, lockfile, 0, init=True)
    fill(ring, 1, 4)
    with pytest.raises(LayoutError):
        other = Ring(mv, 0, 8, 2, 2, lockfile, 0)
        # Show what goes wrong when it does attach:
        pytest.fail(f"attached with claim_slots=2 over a 4-entry table; it sees ids "
                    f"{other.ids[:4].tolist()} where the creator wrote {ring.ids[:4].tolist()}")


CORRUPT_COMMITTED = {
    # an entry marked committed, starting at tail, whose count runs past head
    "count past claimed": 100,
    # an entry marked committed, starting at tail, whose count jumps over an in-flight claim
    "count skips an in-flight claim": 4,
    # a negative count moves tail backwards (uint64 store overflows)
    "negative count": -5,
}


@pytest.mark.parametrize("count", CORRUPT_COMMITTED.values(), ids=CORRUPT_COMMITTED.keys())
def test_commit_bounds_checks_committed_entries(lockfile, count):
    """A corrupt committed entry must raise ``LayoutError`` and never publish a
    ``tail`` past an in-flight claim (its slots would become free and the next
    enqueue would overwrite unprocessed records)."""
    ring, _, mv = make_ring(lockfile, capacity=8, claim_slots=4)
    fill(ring, 1, 8)
    a = ring.claim(2, claimer=1)
    b = ring.claim(2, claimer=1)
    inflight = ring.claim(2, claimer=1)
    table = claim_table(mv, 4)
    table[b.entry, 1] = count
    table[b.entry, 3] = COMMITTED
    try:
        ring.commit(a)
        outcome = "returned normally"
    except LayoutError:
        outcome = None
    except Exception as exc:  # noqa: BLE001 - the point is which error
        outcome = f"raised {type(exc).__name__}: {exc}"
    assert ring.tail <= inflight.start, (
        f"commit published tail={ring.tail} past {inflight}, still in flight: "
        f"its slots are now free for the next enqueue")
    assert outcome is None, f"commit over a corrupt committed entry {outcome}, not LayoutError"


def test_ring_scan_and_depth(lockfile):
    ring, _, _ = make_ring(lockfile, capacity=8, dim=3)
    ids, vecs = ring.scan(1)[:2]
    assert ids.shape == (0,) and vecs.shape == (0, 3)
    fill(ring, 1, 3, space=1)
    fill(ring, 4, 2, space=2)
    c = ring.claim(2, claimer=1)
    assert ring.depth() == 3 and ring.queued() == 5
    ids, vecs = ring.scan(1)[:2]
    assert ids.tolist() == [1, 2, 3]  # in-flight records are still visible
    assert vecs[:, 0].tolist() == [1.0, 2.0, 3.0]
    ids[:] = 0
    assert ring.ids[:3].tolist() == [1, 2, 3], "scan must return copies"
    ring.commit(c)
    assert ring.scan(1)[0].tolist() == [3] and ring.scan(2)[0].tolist() == [4, 5]
    assert ring.depth() == 3 and ring.queued() == 3


# ---------------------------------------------------------------- LockFile
def _child_hold_byte(path: str, index: int, conn) -> None:
    lf = LockFile.open(path)
    lf.acquire(index)
    conn.send("held")
    while True:  # hold it until killed
        signal.pause()


def _child_try_then_wait(path: str, index: int, conn) -> None:
    lf = LockFile.open(path)
    conn.send(("tried", lf.try_acquire(index)))
    lf.acquire(index)
    conn.send(("got", True))
    lf.release(index)


def test_lockfile_excludes_other_processes_and_is_released_on_kill(lockfile):
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child_hold_byte, args=(lockfile.path, 3, child), daemon=True)
    proc.start()
    try:
        assert recv(parent, "that it holds byte 3") == "held"
        assert not lockfile.try_acquire(3), "byte 3 taken while another process holds it"
        assert lockfile.try_acquire(4), "byte 4 is free"
        lockfile.release(4)
        assert not lockfile.try_acquire(3)
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(lambda: lockfile.try_acquire(3), DEADLINE_S, interval=0.005,
                 message="the kernel to release byte 3 of the killed child")
        lockfile.release(3)
        proc.join(DEADLINE_S)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        stop(proc)


def test_lockfile_blocking_acquire_waits_for_release(lockfile):
    lockfile.acquire(3)
    locked = True
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child_try_then_wait, args=(lockfile.path, 3, child), daemon=True)
    proc.start()
    try:
        assert recv(parent, "its try_acquire") == ("tried", False)
        lockfile.release(3)
        locked = False
        assert recv(parent, "that acquire returned") == ("got", True)
        proc.join(DEADLINE_S)
        assert proc.exitcode == 0
    finally:
        if locked:
            lockfile.release(3)
        stop(proc)


def test_lockfile_excludes_threads(lockfile):
    held, done = threading.Event(), threading.Event()

    def holder():
        with lockfile.hold(5):
            held.set()
            done.wait(DEADLINE_S)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(DEADLINE_S), "the thread never took byte 5"
        assert not lockfile.try_acquire(5), "a second thread of the same process took byte 5"
        assert lockfile.try_acquire(6)
        lockfile.release(6)
    finally:
        done.set()
        t.join(DEADLINE_S)
    assert not t.is_alive()
    assert lockfile.try_acquire(5), "byte 5 not released after the thread left hold()"
    lockfile.release(5)


def test_lockfile_hold_releases_on_exception_and_open_is_cached(lockfile, tmp_path):
    with pytest.raises(RuntimeError):
        with lockfile.hold(2):
            raise RuntimeError("boom")
    assert lockfile.try_acquire(2)
    lockfile.release(2)
    path = str(tmp_path / "cached")
    assert LockFile.open(path) is LockFile.open(path)


# ---------------------------------------------------------------- InstanceLock
def _child_try_instance_lock(path: str, conn) -> None:
    lock = InstanceLock(path)
    conn.send((lock.try_acquire(), lock.holder_pid()))


def _child_hold_instance_lock(path: str, conn) -> None:
    lock = InstanceLock(path)
    conn.send(lock.try_acquire())
    while True:
        signal.pause()


def test_instance_lock_excludes_a_second_process(tmp_path):
    path = str(tmp_path / "LOCK")
    mine = InstanceLock(path)
    assert mine.try_acquire()
    assert mine.holder_pid() == os.getpid()
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child_try_instance_lock, args=(path, child), daemon=True)
    proc.start()
    try:
        assert recv(parent, "its try_acquire") == (False, os.getpid())
        proc.join(DEADLINE_S)
        assert proc.exitcode == 0
    finally:
        stop(proc)
        mine.release()


def test_instance_lock_names_its_holder_and_is_released_on_kill(tmp_path):
    path = str(tmp_path / "LOCK")
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child_hold_instance_lock, args=(path, child), daemon=True)
    proc.start()
    mine = InstanceLock(path)
    try:
        assert recv(parent, "that it holds the instance lock") is True
        assert not mine.try_acquire(), "second instance took the lock"
        assert mine.holder_pid() == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(mine.try_acquire, DEADLINE_S, interval=0.005,
                 message="the kernel to release the killed holder's flock")
        assert mine.holder_pid() == os.getpid()
    finally:
        stop(proc)
        mine.release()


# ---------------------------------------------------------------- segments
def test_object_name():
    assert object_name("inst", "ring0") == "/engram.inst.ring0"
    for bad in ("a/b", "a b", "é", "x" * 200):
        with pytest.raises(ValueError):
            object_name(bad, "p")


def test_segment_create_attach_and_share(names):
    name = names.name("seg")
    seg = Segment.create(name, 4096)
    names.segments.append(seg)
    st = os.stat(os.path.join(SHM_DIR, name[1:]))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 4096 and seg.created and len(seg.buf) == 4096
    with pytest.raises(SegmentExists):
        Segment.create(name, 4096)
    other = Segment.attach(name)
    names.segments.append(other)
    assert not other.created and other.size == 4096 and len(other.buf) == 4096
    seg.buf[100:104] = b"abcd"
    assert bytes(other.buf[100:104]) == b"abcd"
    np.frombuffer(other.buf, np.uint64, 1, 4088)[0] = 2**64 - 1
    assert bytes(seg.buf[4088:4096]) == b"\xff" * 8
    other.close()
    assert other.buf is None
    again = Segment.attach(name)  # close() is not unlink()
    names.segments.append(again)
    assert bytes(again.buf[100:104]) == b"abcd"
    seg.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name[1:]))
    with pytest.raises(SegmentMissing):
        Segment.attach(name)
    seg.unlink()  # quiet when already gone


def test_segment_attach_missing(names):
    with pytest.raises(SegmentMissing):
        Segment.attach(names.name("missing"))


def test_segment_close_with_live_numpy_views(names):
    seg = Segment.create(names.name("views"), 4096)
    names.segments.append(seg)
    arr = np.frombuffer(seg.buf, np.uint32, 4, 0)
    arr[:] = [1, 2, 3, 4]
    seg.close()  # documented to fail quietly; the mapping lives on for `arr`
    seg.close()
    assert arr.tolist() == [1, 2, 3, 4]


def test_ring_shared_between_two_mappings(names, lockfile):
    name = names.name("ring")
    size = 64 + ring_bytes(8, 2, 4)
    a = Segment.create(name, size)
    names.segments.append(a)
    b = Segment.attach(name)
    names.segments.append(b)
    producer = Ring(a.buf, 64, 8, 2, 4, lockfile, 1, init=True)
    consumer = Ring(b.buf, 64, 8, 2, 4, lockfile, 1)
    assert fill(producer, 11, 5, space=3, now=7.5) == 5
    c = consumer.claim(10, claimer=2)
    ids, spaces, times, vecs = consumer.view(c)
    assert ids.tolist() == [11, 12, 13, 14, 15]
    assert spaces.tolist() == [3] * 5 and times.tolist() == [7.5] * 5
    assert vecs[:, 1].tolist() == [12.0, 13.0, 14.0, 15.0, 16.0]
    consumer.commit(c)
    assert producer.tail == 5 and producer.queued() == 0
    del ids, spaces, times, vecs, producer, consumer


# ---------------------------------------------------------------- wake signals
def _child_post(name: str, conn) -> None:
    sig = WakeSignal.attach(name)
    sig.post()
    sig.close()
    conn.send("posted")


def test_wake_signal_post_wait_drain(names):
    name = names.name("wake")
    sig = WakeSignal.create(name)
    names.signals.append(sig)
    assert os.path.exists(os.path.join(SHM_DIR, "sem." + name[1:]))
    assert sig.created and sig.name == name
    assert sig.wait(0) is False
    t0 = time.monotonic()
    assert sig.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.04, "wait(timeout) returned before the timeout"
    sig.post()
    assert sig.wait(DEADLINE_S) is True
    for _ in range(5):
        sig.post()
    sig.drain()
    assert sig.wait(0) is False
    sig.drain()  # draining an empty signal returns at once
    with pytest.raises(SegmentExists):
        WakeSignal.create(name)
    other = WakeSignal.attach(name)
    names.signals.append(other)
    assert not other.created
    other.post()
    assert sig.wait(DEADLINE_S) is True
    other.close()
    WakeSignal.attach(name).close()  # close() is not unlink()
    sig.unlink()
    with pytest.raises(SegmentMissing):
        WakeSignal.attach(name)


def test_wake_signal_across_processes(names):
    name = names.name("wake")
    sig = WakeSignal.create(name)
    names.signals.append(sig)
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child_post, args=(name, child), daemon=True)
    proc.start()
    try:
        assert sig.wait(DEADLINE_S) is True, "the child's post did not wake us"
        assert recv(parent, "its post") == "posted"
        proc.join(DEADLINE_S)
        assert proc.exitcode == 0
    finally:
        stop(proc)


def test_wake_signal_attach_missing(names):
    with pytest.raises(SegmentMissing):
        WakeSignal.attach(names.name("nosem"))


# ---------------------------------------------------------------- instance objects
def test_instance_objects_find_and_remove(names, tmp_path):
    seg_name = names.name("ring0")
    sem_name = names.name("wake0")
    bystander_instance = names.other_instance()
    bystander = names.name("ring0", instance=bystander_instance)
    names.segments.append(Segment.create(seg_name, 4096))
    names.signals.append(WakeSignal.create(sem_name))
    names.segments.append(Segment.create(bystander, 4096))

    found = instance_objects(names.instance)
    assert sorted(found) == sorted([("shm", seg_name), ("sem", sem_name)])
    removed = remove_instance_objects(names.instance)
    assert sorted(removed) == sorted([seg_name, sem_name])
    assert instance_objects(names.instance) == []
    assert not os.path.exists(os.path.join(SHM_DIR, seg_name[1:]))
    assert not os.path.exists(os.path.join(SHM_DIR, "sem." + sem_name[1:]))
    with pytest.raises(SegmentMissing):
        Segment.attach(seg_name)
    with pytest.raises(SegmentMissing):
        WakeSignal.attach(sem_name)
    # another instance's objects are left alone
    assert instance_objects(bystander_instance) == [("shm", bystander)]
    assert remove_instance_objects(names.instance) == []
    assert instance_objects(names.instance, shm_dir=str(tmp_path / "nowhere")) == []
    # gone for posix_ipc too, not just from the directory listing
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.SharedMemory(seg_name)


def test_uncommitted_lists_waiting_and_open_claims_but_not_committed_ones(lockfile):
    ring, _, _ = make_ring(lockfile, capacity=8, claim_slots=4)
    fill(ring, 1, 6)                       # positions 0..5
    a = ring.claim(2, claimer=3)           # 0,1 stay claimed by 3
    b = ring.claim(2, claimer=5)           # 2,3 committed out of order: left out
    ring.commit(b)
    slots, owner = ring.uncommitted()      # 4,5 never claimed
    assert slots.tolist() == [0, 1, 4, 5]
    assert owner.tolist() == [3, 3, -1, -1]
    ring.commit(a)
    slots, owner = ring.uncommitted()
    assert slots.tolist() == [4, 5] and owner.tolist() == [-1, -1]


def test_lockfile_acquire_with_a_deadline_gives_up_on_a_stopped_holder(lockfile):
    from shm.errors import LockTimeout
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_child_hold_byte, args=(lockfile.path, 5, child), daemon=True)
    proc.start()
    try:
        assert recv(parent, "that it holds byte 5") == "held"
        os.kill(proc.pid, signal.SIGSTOP)  # stopped, not dead: the kernel keeps its lock
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match="byte 5"):
            lockfile.acquire(5, timeout=0.2)
        assert time.monotonic() - t0 < DEADLINE_S
        lockfile.acquire(6, timeout=0.2)  # another byte is free at once
        lockfile.release(6)
        with pytest.raises(LockTimeout):
            with lockfile.hold(5, timeout=0.05):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        lockfile.acquire(5, timeout=DEADLINE_S)  # released by the holder's death, within the deadline
        lockfile.release(5)
    finally:
        stop(proc)
