"""Named POSIX shared-memory segments and wake-up semaphores.

Naming: every object of an instance is ``/engram.<name>.<part>``; semaphores
show up in ``/dev/shm`` as ``sem.engram.<name>.<part>``. Only the supervisor
creates (``O_CREX``, mode 0600) and unlinks; every other process attaches and
closes. ``close()`` never unlinks (STYLE §6).

Semaphores are used as wake-up signals only, never as mutexes: a POSIX
semaphore is not released when its holder dies (DESIGN §4).
"""

from __future__ import annotations

import mmap
import os
import re

import posix_ipc

from shm.errors import SegmentExists, SegmentMissing

SHM_DIR = "/dev/shm"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def object_name(instance: str, part: str) -> str:
    """The POSIX name of one object of an instance."""
    name = f"engram.{instance}.{part}"
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid shared-memory object name {name!r}")
    return "/" + name


class Segment:
    """One mapped shared-memory segment.

    ``buf`` is a writable memoryview over the whole mapping; callers build
    numpy views on it. The file descriptor is closed right after mapping, so a
    segment costs one mapping and no descriptor.
    """

    def __init__(self, name: str, size: int, created: bool):
        self.name = name
        self.size = size
        self.created = created
        self._mmap: mmap.mmap | None = None
        self.buf: memoryview | None = None
        self.inode = 0

    @classmethod
    def create(cls, name: str, size: int) -> "Segment":
        """Create a new segment (supervisor only); fails if the name exists."""
        try:
            mem = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError as exc:
            raise SegmentExists(f"shared-memory segment {name} already exists") from exc
        seg = cls(name, size, created=True)
        seg._map(mem)
        return seg

    @classmethod
    def attach(cls, name: str) -> "Segment":
        """Attach to an existing segment (any process)."""
        try:
            mem = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise SegmentMissing(f"shared-memory segment {name} does not exist") from exc
        seg = cls(name, mem.size, created=False)
        seg._map(mem)
        return seg

    def _map(self, mem: "posix_ipc.SharedMemory") -> None:
        try:
            # Which object this mapping is: a later create of the same name
            # (a restart) is another inode (engine.control.liveness).
            self.inode = os.fstat(mem.fd).st_ino
            self._mmap = mmap.mmap(mem.fd, mem.size)
        finally:
            mem.close_fd()
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        """Unmap. Fails quietly if numpy views still reference the buffer:
        the mapping then lives until those views are collected."""
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass
            self._mmap = None

    def unlink(self) -> None:
        unlink_quietly(self.name)


def unlink_quietly(name: str) -> None:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


class WakeSignal:
    """A counting semaphore used to wake a sleeping process.

    ``post()`` never blocks; ``wait(timeout)`` returns True if woken, False on
    timeout. Extra posts are drained by ``drain()`` so the count stays small.
    """

    def __init__(self, sem: "posix_ipc.Semaphore", created: bool):
        self._sem = sem
        self.name = sem.name
        self.created = created

    @classmethod
    def create(cls, name: str) -> "WakeSignal":
        try:
            sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=0)
        except posix_ipc.ExistentialError as exc:
            raise SegmentExists(f"semaphore {name} already exists") from exc
        return cls(sem, created=True)

    @classmethod
    def attach(cls, name: str) -> "WakeSignal":
        try:
            sem = posix_ipc.Semaphore(name)
        except posix_ipc.ExistentialError as exc:
            raise SegmentMissing(f"semaphore {name} does not exist") from exc
        return cls(sem, created=False)

    def post(self) -> None:
        try:
            self._sem.release()
        except posix_ipc.Error:
            # Value at SEM_VALUE_MAX: the sleeper is woken anyway.
            pass

    def wait(self, timeout: float) -> bool:
        try:
            self._sem.acquire(max(timeout, 0.0))
            return True
        except posix_ipc.BusyError:
            return False

    def drain(self) -> None:
        try:
            while True:
                self._sem.acquire(0)
        except posix_ipc.BusyError:
            pass

    def close(self) -> None:
        try:
            self._sem.close()
        except posix_ipc.Error:
            pass

    def unlink(self) -> None:
        unlink_semaphore_quietly(self.name)


def unlink_semaphore_quietly(name: str) -> None:
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        pass


def instance_objects(instance: str, shm_dir: str = SHM_DIR) -> list[tuple[str, str]]:
    """Every object of an instance found in /dev/shm, as (kind, posix name).

    Used by the supervisor to remove what a dead previous run left behind.
    """
    prefix = f"engram.{instance}."
    found: list[tuple[str, str]] = []
    try:
        entries = os.listdir(shm_dir)
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.startswith(prefix):
            found.append(("shm", "/" + entry))
        elif entry.startswith("sem." + prefix):
            found.append(("sem", "/" + entry[len("sem."):]))
    return found


def remove_instance_objects(instance: str, shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink every object of an instance; returns the names removed."""
    removed = []
    for kind, name in instance_objects(instance, shm_dir):
        if kind == "shm":
            unlink_quietly(name)
        else:
            unlink_semaphore_quietly(name)
        removed.append(name)
    return removed
