"""The generations of a slot's write-ahead log, and the files they live in.

``<data-dir>/wal/slot-<i>.<g>.log`` holds generation g (1, 2, …) of slot i's
log (record format: ``engine.storage.wal``). Appends go to the newest generation.
Before a snapshot the worker rotates to generation g+1, so the snapshot
covers exactly "generations < g+1", and those files can be deleted once
enough snapshots are safely on disk (retention: ``engine.storage.snapshots``). A log
written before generations existed, ``slot-<i>.log``, is read as generation
0 and deleted like any other once covered.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np

from engine.fsutil import fsync_dir
from engine.storage.wal import WalWriter


def wal_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "wal")


def legacy_path(data_dir: str, slot: int) -> str:
    """The single log file of a slot written before generations existed (generation 0)."""
    return os.path.join(wal_dir(data_dir), f"slot-{slot}.log")


def generation_path(data_dir: str, slot: int, gen: int) -> str:
    return os.path.join(wal_dir(data_dir), f"slot-{slot}.{gen}.log")


def generations(data_dir: str, slot: int) -> list[tuple[int, str]]:
    """The slot's log files as (generation, path), oldest first."""
    pattern = re.compile(rf"^slot-{slot}\.(\d+)\.log$")
    out = []
    try:
        names = os.listdir(wal_dir(data_dir))
    except FileNotFoundError:
        return []
    for name in names:
        m = pattern.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(wal_dir(data_dir), name)))
        elif name == f"slot-{slot}.log":
            out.append((0, os.path.join(wal_dir(data_dir), name)))
    return sorted(out)


class WalLog:
    """The generations of one slot's log; appends go to the newest.

    Single owner: the worker of the slot. ``rotate`` starts generation g+1
    (a snapshot then covers everything before it); ``remove_below`` deletes
    generations a snapshot made unnecessary. ``first_generation`` keeps a new
    log above every generation a snapshot already covers.
    """

    def __init__(self, data_dir: str, slot: int, fsync: str, first_generation: int = 1,
                 clock=time.monotonic):
        self.data_dir, self.slot, self.fsync_policy, self.clock = data_dir, slot, fsync, clock
        os.makedirs(wal_dir(data_dir), mode=0o700, exist_ok=True)
        found = generations(data_dir, slot)
        gen = max(first_generation, 1)
        if found and found[-1][0] >= gen:
            last_gen, last_path = found[-1]
            # An empty newest file (a restart before any append) is reused.
            gen = last_gen if last_gen > 0 and os.path.getsize(last_path) == 0 else last_gen + 1
        self.generation = gen
        self.writer = self._open(gen)
        self._older = self._older_bytes()

    def _open(self, gen: int, sync_dir: bool = True) -> WalWriter:
        writer = WalWriter(generation_path(self.data_dir, self.slot, gen), self.fsync_policy, self.clock)
        if sync_dir:
            try:
                fsync_dir(wal_dir(self.data_dir))  # the new file's name is durable too
            except OSError:
                writer.close()
                raise
        return writer

    def rotate(self) -> int:
        """Close the current generation and start the next; returns its number.
        On an error (disk full) the current generation stays the one appended to.

        Nothing is synced here unless the policy is ``always`` (rotation happens
        on the insert path, right before a snapshot fork): the caller makes the
        closed generation and the directory durable off that path
        (``sync_closed``, run by the snapshot child)."""
        new = self._open(self.generation + 1, sync_dir=self.fsync_policy == "always")
        old, self.writer = self.writer, new
        self.generation += 1
        self._older = self._older_bytes()
        try:
            old.close()
        except OSError:
            pass  # its records stay until a snapshot covers them
        return self.generation

    def sync_closed(self, gen: int) -> None:
        """Sync generation ``gen`` (closed by ``rotate``) and the log directory.
        Safe from a forked child: it opens its own descriptors."""
        if self.fsync_policy == "never":
            return
        fd = os.open(generation_path(self.data_dir, self.slot, gen), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(wal_dir(self.data_dir))

    def remove_below(self, gen: int) -> list[str]:
        """Delete the generations < ``gen`` (covered by a kept snapshot)."""
        removed = []
        for g, path in generations(self.data_dir, self.slot):
            if g < gen and g != self.generation:
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
        self._older = self._older_bytes()
        if removed:
            fsync_dir(wal_dir(self.data_dir))
        return removed

    def _older_bytes(self) -> int:
        total = 0
        for g, path in generations(self.data_dir, self.slot):
            if g != self.generation:
                try:
                    total += os.path.getsize(path)
                except OSError:
                    pass
        return total

    def total_bytes(self) -> int:
        """Bytes of log on disk, every generation (older ones as of the last rotation)."""
        return self._older + self.writer.size()

    # the current generation's writer
    def append(self, space: str, ids: np.ndarray, vectors: np.ndarray | None, stamps: np.ndarray | None = None,
               kind: int = 0) -> tuple[int, float | None]:
        return self.writer.append(space, ids, vectors, stamps, kind)

    def sync(self) -> float | None:
        return self.writer.sync()

    def tick(self) -> float | None:
        return self.writer.tick()

    def size(self) -> int:
        return self.total_bytes()

    def close(self) -> None:
        self.writer.close()
