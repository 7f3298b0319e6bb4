"""Locks that the kernel releases when their holder dies.

A ``LockFile`` hands out exclusive locks on single bytes of one file with
``fcntl`` byte-range locks (``F_SETLKW``). The kernel drops them when the
owning process exits, however it exits, so a worker killed with SIGKILL in
the middle of a critical section never wedges the others (DESIGN §4).

Concurrency contract:

* fcntl locks belong to a *process*: two threads of one process would both
  "hold" the same byte. Each byte therefore also has a ``threading.Lock``
  taken first, so the lock excludes threads as well as processes.
* Closing *any* descriptor of the file drops *all* locks the process holds on
  it (POSIX). So there is exactly one ``LockFile`` per (process, path):
  ``LockFile.open`` returns the cached one.
* Taking and releasing a lock is a full memory barrier, so data written
  before ``release`` is visible to the next holder on every architecture.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager

from shm.errors import LockTimeout

_cache: dict[tuple[int, str], "LockFile"] = {}
_cache_guard = threading.Lock()


class LockFile:
    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._thread_locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def open(cls, path: str) -> "LockFile":
        key = (os.getpid(), os.path.abspath(path))
        with _cache_guard:
            lf = _cache.get(key)
            if lf is None:
                lf = cls(key[1])
                _cache[key] = lf
            return lf

    def _thread_lock(self, index: int) -> threading.Lock:
        lock = self._thread_locks.get(index)
        if lock is None:
            with self._guard:
                lock = self._thread_locks.setdefault(index, threading.Lock())
        return lock

    def acquire(self, index: int, timeout: float | None = None) -> None:
        """Make byte ``index`` ours: blocking with ``timeout`` None, else
        raising ``LockTimeout`` once ``timeout`` seconds pass. fcntl has no
        timed wait, so a deadline polls a non-blocking attempt with a backoff
        from 50 us to 2 ms: a free lock is taken at once, a contended one
        costs the waiter a few wake-ups per millisecond at most."""
        tl = self._thread_lock(index)
        if timeout is None:
            tl.acquire()
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, index, os.SEEK_SET)
            except BaseException:
                tl.release()
                raise
            return
        deadline = time.monotonic() + timeout
        if not tl.acquire(timeout=max(0.0, timeout)):
            raise LockTimeout(f"lock byte {index} of {self.path} not free within {timeout:g}s")
        pause = 50e-6
        try:
            while True:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index, os.SEEK_SET)
                    return
                except (BlockingIOError, PermissionError):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeout(f"lock byte {index} of {self.path} not free within {timeout:g}s "
                                          f"(its holder may be stopped)") from None
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, 2e-3)
        except BaseException:
            tl.release()
            raise

    def try_acquire(self, index: int) -> bool:
        """Take byte ``index`` if nobody holds it; never blocks."""
        tl = self._thread_lock(index)
        if not tl.acquire(blocking=False):
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index, os.SEEK_SET)
            return True
        except OSError:
            tl.release()
            return False

    def release(self, index: int) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, index, os.SEEK_SET)
        finally:
            self._thread_lock(index).release()

    @contextmanager
    def hold(self, index: int, timeout: float | None = None):
        self.acquire(index, timeout)
        try:
            yield
        finally:
            self.release(index)


class InstanceLock:
    """Exclusive ``flock`` on a file, held for a process's lifetime.

    Used by the supervisor on ``<data-dir>/LOCK``: a second instance on the
    same data directory fails to take it. The holder's pid is written into the
    file for the error message. Released by the kernel on exit.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self, run_id: int = 0) -> bool:
        """Take the lock; the file then says ``<pid> <run_id>`` (``read_holder``)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {run_id}\n".encode())
        self._fd = fd
        return True

    def acquire_within(self, seconds: float, run_id: int = 0, step: float = 0.05) -> bool:
        """``try_acquire`` until it succeeds or ``seconds`` pass: a producer
        checking liveness takes a shared lock for a moment
        (``engine.control.liveness``), which must not fail a start."""
        deadline = time.monotonic() + seconds
        while not self.try_acquire(run_id):
            if time.monotonic() >= deadline:
                return False
            time.sleep(step)
        return True

    @staticmethod
    def held(fd: int) -> bool:
        """Whether some process holds the exclusive lock on the file of ``fd``
        (a shared lock taken and dropped at once: it never blocks)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    def fileno(self) -> int | None:
        """The held descriptor (forked children close it), or None."""
        return self._fd

    def holder_pid(self) -> int | None:
        try:
            with open(self.path) as fh:
                return int(fh.read().split()[0]) or None
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def read_run_id(fd: int) -> int:
        """The run id the holder wrote (0 if none or unreadable); one pread."""
        try:
            fields = os.pread(fd, 64, 0).split()
            return int(fields[1]) if len(fields) > 1 else 0
        except (OSError, ValueError):
            return 0

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
