"""When and how a worker snapshots its shards without stalling ingestion.

Between two batches (``poll``), once the log not yet covered by a snapshot
has grown past ``--snapshot-wal-bytes`` or ``--snapshot-interval`` seconds
have passed with something new logged, or at most every ``URGENT_EVERY_S``
while the slot's log holds many tombstones back (``SlotStore.holds_tombstones``),
the worker:

1. rotates its log to generation g (``WalLog.rotate``): the snapshot covers
   every batch logged before, i.e. generations < g;
2. ``os.fork()``s. The child sees the shards as they were at the fork
   (copy-on-write, as Redis BGSAVE) and writes ``snapshots/slot-<i>/gen-<g>``
   (``engine.storage.snapshots.write``), then replaces the manifest and deletes what
   the retention rule (``engine.storage.snapshots.retain``) no longer needs: older
   snapshots and log generations; it reports through a pipe and
   ``os._exit``s. It first syncs the closed log generation and the log
   directory. All of that is kept off the insert path: the manifest's and the
   directories' fsyncs and the deletion of large files took 40-75 ms when the
   worker did them. It reads the slot's rows of the identity table
   (``engine.storage.ledgerfile``); it never writes shared memory or the metric row
   (metrics/writer.py), dies with the worker (parent-death signal), and runs
   at a lower CPU priority on any CPU the supervisor may use, so the workers
   keep theirs;
3. keeps inserting; each ``poll`` reaps the child with ``WNOHANG`` and takes
   over the manifest's new contents from its report. A child that failed
   (disk full) or was killed is counted and retried later with a growing
   delay, never fatal; the worker then re-reads the manifest, which the child
   may have replaced before it died.

At a graceful stop (``final``) a running child is waited for, then a last
snapshot is written in the worker itself if anything was logged since, so
the next start replays little. No snapshot is started while the log cannot
be written (the disk-full state of the worker).

Single owner: the worker of the slot. Not thread-safe (no threads exist).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time

from engine import child as child_setup
from engine.storage import snapshots
from engine.storage.snapshots import Entry

log = logging.getLogger("engram.worker")

# The child writes at nice 10: under contention it gets about a tenth of a
# worker's CPU share (CFS weights 110 vs 1024), enough to finish, little
# enough that ingestion keeps its pace.
CHILD_NICE = 10
RETRY_FIRST_S = 1.0
# A snapshot that only lets log files (and the tombstones they hold back) go
# is taken at most this often.
URGENT_EVERY_S = 5.0
RETRY_MAX_S = 60.0
# Test hook: the child pauses this long after writing its files, before the
# rename (tests/test_snapshot.py kills a worker mid-snapshot). Unset in production.


class Snapshotter:
    def __init__(self, data_dir: str, slot: int, shards, name_of, wal, entries: list[Entry], meta: dict,
                 metrics, interval_s: float, wal_bytes: int, uncovered: int = 0, cpus=None,
                 clock=time.monotonic, pause_s: float = 0.0, ledger=None):
        self.sdir = snapshots.slot_dir(data_dir, slot)
        self.ledger = ledger  # () -> the ledger file's arrays (engine.storage.ledgerfile.collect)
        self.on_covered = lambda wal_from: None  # log generations < wal_from are gone
        # () -> True when this slot's log holds tombstones back (engine.ledger.tombstones):
        # a snapshot lets older log files go, and the tombstones with them.
        self.urgent = lambda: False
        self.pause_s = pause_s  # test hook (engine.config.hooks): the child waits before writing
        self.slot = slot
        self.shards = shards
        self.name_of = name_of
        self.wal = wal
        self.entries = list(entries)
        self.meta = meta
        self.metrics = metrics
        self.interval_s = interval_s
        self.wal_bytes = wal_bytes
        self.uncovered = uncovered  # log bytes no snapshot covers (nor the one being written)
        self.pending = 0            # log bytes the running child will cover
        self.cpus = cpus
        self.clock = clock
        self.last_done = clock()
        self.retry_at = 0.0
        self.failures = 0
        self.child = 0
        self.child_gen = 0
        self.child_fd = -1
        self.child_started = 0.0

    # -- policy -------------------------------------------------------------------
    def appended(self, nbytes: int) -> None:
        self.uncovered += nbytes

    def due(self, now: float) -> bool:
        if self.child or now < self.retry_at:
            return False
        if now - self.last_done >= URGENT_EVERY_S and self.urgent():
            return True
        if self.uncovered <= 0:
            return False
        by_size = 0 < self.wal_bytes <= self.uncovered
        by_time = self.interval_s > 0 and now - self.last_done >= self.interval_s
        return by_size or by_time

    def poll(self, writable: bool = True) -> None:
        """Between batches: reap a finished child, or start one if due."""
        if self.child:
            self._reap(os.WNOHANG)
        elif writable and self.due(self.clock()):
            self.start()

    # -- background snapshot ------------------------------------------------------
    def start(self) -> bool:
        try:
            gen = self.wal.rotate()
        except OSError as exc:
            self._failed(f"could not start a new log generation: {exc}")
            return False
        self.pending, self.uncovered = self.uncovered, 0
        shards = self.shards.named(self.name_of)
        rfd, wfd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: write, report, _exit; nothing else
            os.close(rfd)
            self._child_main(parent, wfd, gen, shards)
        os.close(wfd)
        os.set_blocking(rfd, False)
        self.child, self.child_gen, self.child_fd, self.child_started = pid, gen, rfd, self.clock()
        log.debug("slot %d: snapshot gen-%d started in pid %d", self.slot, gen, pid)
        return True

    def _child_main(self, parent: int, wfd: int, gen: int, shards) -> None:
        code, report = 1, {}
        try:
            child_setup.die_with_parent()
            if os.getppid() != parent:
                os._exit(1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if self.cpus:
                os.sched_setaffinity(0, self.cpus)
            os.nice(CHILD_NICE)
            # The rotation left these syncs to this process, off the insert path.
            self.wal.sync_closed(gen - 1)
            entry = snapshots.write(self.sdir, gen, shards, self.meta,
                                    (lambda tmp: time.sleep(self.pause_s)) if self.pause_s else None,
                                    self.ledger)
            # The bookkeeping too (its fsyncs and deletions would stall the
            # worker): the manifest, then what retention no longer needs.
            kept, dropped, wal_from = snapshots.retain(self.entries + [entry])
            snapshots.write_manifest(self.sdir, self.slot, kept)
            for old in dropped:
                shutil.rmtree(os.path.join(self.sdir, old.dir), ignore_errors=True)
            removed = self.wal.remove_below(wal_from) if wal_from else []
            report = {"entry": entry.__dict__, "kept": [e.__dict__ for e in kept], "wal_from": wal_from,
                      "dropped": len(dropped), "removed": len(removed)}
            code = 0
        except BaseException as exc:  # reported to the worker, which counts and retries
            report = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                os.write(wfd, json.dumps(report).encode()[:65536])
            except BaseException:
                pass
            os._exit(code)

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.child, flags)
        except ChildProcessError:
            pid, status = self.child, -1
        if pid == 0:
            return
        try:
            raw = os.read(self.child_fd, 65536)
        except (BlockingIOError, OSError):
            raw = b""
        os.close(self.child_fd)
        gen, pid = self.child_gen, self.child
        self.child, self.child_fd = 0, -1
        try:
            report = json.loads(raw or b"{}")
        except ValueError:
            report = {}
        if status == 0 and "entry" in report:
            self._adopt(report)
            return
        try:  # the child may have failed after it replaced the manifest: disk is the truth
            self.entries = snapshots.read_manifest(self.sdir)
        except snapshots.SnapshotError:
            pass
        self.uncovered += self.pending
        self.pending = 0
        shutil.rmtree(os.path.join(self.sdir, f"tmp-{gen}-{pid}"), ignore_errors=True)
        try:
            self.wal.sync_closed(gen - 1)  # the child may have died before it could
        except OSError:
            pass
        if os.WIFSIGNALED(status):
            why = f"the snapshot process was killed by signal {os.WTERMSIG(status)}"
        else:
            why = report.get("error") or f"the snapshot process exited with {status}"
        self._failed(why)

    def _adopt(self, report: dict) -> None:
        """A child wrote a snapshot and the manifest and applied retention."""
        entry = Entry(**report["entry"])
        self.entries = [Entry(**e) for e in report["kept"]]
        self._done(entry, report["wal_from"], report["dropped"], report["removed"])

    def _done(self, entry: Entry, wal_from: int, dropped: int, removed: int) -> None:
        self.pending = 0
        self.failures, self.retry_at, self.last_done = 0, 0.0, self.clock()
        try:  # the files are gone already: this only refreshes the log's view of them
            removed += len(self.wal.remove_below(wal_from)) if wal_from else 0
        except OSError as exc:
            log.warning("slot %d: could not delete covered log files: %s", self.slot, exc)
        if wal_from:
            self.on_covered(wal_from)
        m = self.metrics
        m.inc("snapshots_total", worker_id=self.slot, result="ok")
        m.observe("snapshot_duration_seconds", entry.seconds)
        m.set("snapshot_last_success_timestamp_seconds", entry.created, worker_id=self.slot)
        m.set("wal_size_bytes", float(self.wal.total_bytes()), worker_id=self.slot)
        log.info("slot %d: snapshot %s: %d vectors, %.1f MiB in %.2fs; deleted %d log file(s) and %d "
                 "older snapshot(s)", self.slot, entry.dir, entry.vectors, entry.bytes / 2**20, entry.seconds,
                 removed, dropped)

    def _succeeded(self, entry: Entry) -> None:
        """A snapshot written in this process (the final one): manifest and retention here."""
        kept, dropped, wal_from = snapshots.retain(self.entries + [entry])
        try:
            snapshots.write_manifest(self.sdir, self.slot, kept)
        except OSError as exc:
            shutil.rmtree(os.path.join(self.sdir, entry.dir), ignore_errors=True)
            self.uncovered += self.pending
            self.pending = 0
            self._failed(f"could not update the snapshot manifest: {exc}")
            return
        self.entries = kept
        for old in dropped:
            shutil.rmtree(os.path.join(self.sdir, old.dir), ignore_errors=True)
        self._done(entry, wal_from, len(dropped), 0)

    def _failed(self, why: str) -> None:
        self.failures += 1
        delay = min(RETRY_FIRST_S * 2 ** (self.failures - 1), RETRY_MAX_S)
        self.retry_at = self.clock() + delay
        self.metrics.inc("snapshots_total", worker_id=self.slot, result="failed")
        log.warning("slot %d: snapshot failed (%s); retrying in %.0fs", self.slot, why, delay)

    # -- stop ---------------------------------------------------------------------
    def final(self) -> None:
        """Graceful stop: finish a running snapshot, then take a last one in this
        process if anything was logged since (blocking; ingestion is over)."""
        if self.child:
            self._reap(0)
        if self.uncovered <= 0:
            return
        try:
            gen = self.wal.rotate()
            self.pending, self.uncovered = self.uncovered, 0
            self.wal.sync_closed(gen - 1)
            entry = snapshots.write(self.sdir, gen, self.shards.named(self.name_of), self.meta, ledger=self.ledger)
        except (OSError, snapshots.SnapshotError) as exc:
            self.uncovered += self.pending
            self.pending = 0
            self._failed(f"final snapshot: {exc}")
            return
        self._succeeded(entry)

    def abort(self) -> None:
        """The worker is going away without a graceful stop: end a running child."""
        if not self.child:
            return
        try:
            os.kill(self.child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(0)
