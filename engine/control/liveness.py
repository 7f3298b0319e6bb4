"""Whether the run a handle attached to is still the live run of its instance.

A producer must never acknowledge observations into the shared memory of a
run that is gone: nothing would insert them. A pid cannot tell: after a
``kill -9`` the dead supervisor's pid may belong to any other process (pid
reuse), and a ``kill -9`` leaves the segments in place. Two facts that
cannot be reused decide instead:

* the control segment under the instance's name is still the one this
  handle mapped (same inode): a restart creates a new one, a graceful stop
  removes it;
* the supervisor's lock on ``<data-dir>/LOCK`` is held, by this run: the
  lock file holds the run id the supervisor also wrote into the control
  block (``Header.run_id``), so a new supervisor that took the lock and has
  not yet replaced the dead run's segments is not taken for it. The kernel drops a
  ``flock`` when its holder dies, however it dies; the check takes a shared
  lock for an instant (never blocking), which fails while the supervisor
  holds its exclusive one. A starting supervisor retries its own lock for a
  second (``InstanceLock.acquire_within``), so the check never makes a start
  fail.

Three system calls per check (``stat``, ``flock``, ``pread``), cheap next
to an enqueue. Tests inject their own ``Liveness`` into ``Engine``.
"""

from __future__ import annotations

import os

from engine.control.instance import Instance
from shm.lock import InstanceLock
from shm.segment import SHM_DIR, object_name


class Liveness:
    def __init__(self, inst: Instance):
        self.name = inst.name
        self.path = os.path.join(SHM_DIR, object_name(inst.name, "ctl").lstrip("/"))
        self.inode = inst.segments[0].inode  # the control segment is mapped first
        self.header = inst.header
        try:
            self.lock_fd: int | None = os.open(os.path.join(inst.params.data_dir, "LOCK"),
                                               os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.lock_fd = None

    def why_not(self) -> str | None:
        """None while the run is live; else why it is not, for the error message."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "it has stopped (its shared memory is gone)"
        if st.st_ino != self.inode:
            return "it was restarted: this handle belongs to a run that has ended; connect again"
        if self.lock_fd is None or not InstanceLock.held(self.lock_fd):
            return ("its supervisor is gone (the data-directory lock is free): this is the shared memory "
                    f"of a dead run, which the next start of {self.name!r} takes over")
        mine = self.header.run_id
        if mine == 0 or InstanceLock.read_run_id(self.lock_fd) != mine:
            return "another run holds its data directory (it is restarting); connect again once it runs"
        return None

    def close(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
