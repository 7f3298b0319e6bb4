"""Compaction: rebuild a shard without its dead vectors, giving their memory back.

hnswlib's ``mark_deleted`` hides a vector and keeps its memory, and its
``replace_deleted`` reuse loses and duplicates labels (bench/hnsw_deletes.py
shows both). So a shard whose dead share (vectors forgotten, or replaced by a
newer observation in any shard: its element count minus the live keys the
identity table says it holds) passes ``--compact-ratio`` is rebuilt:

1. ``start``: list its labels, keep those the table says this slot holds,
   make an empty index sized for them;
2. ``step`` (the worker calls it between batches, about ``SLICE_S`` each):
   copy the next labels' vectors from the old index into the new one. The
   old index keeps serving recall and taking inserts meanwhile; the labels
   those inserts, forgets and replacements touch are remembered;
3. at the end, copy the touched labels again as they are now (or mark them
   deleted in the new index if they are dead), and swap the new index in.
   The old one is freed: its memory goes back.

Nothing stalls: a slice is as long as an insert slice, and ingestion and
recall go on between slices. A snapshot forked meanwhile writes the old
index, which is complete. Single owner: the worker of the slot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("engram.worker")

SLICE_S = 0.005
CHECK_EVERY_S = 0.25
MIN_DEAD = 64  # a shard with fewer dead vectors is not worth rebuilding
FIRST_CHUNK = 64


@dataclass
class Job:
    space: int
    old: object
    new: object
    labels: np.ndarray
    started: float
    before_bytes: int
    cursor: int = 0
    touched: list = field(default_factory=list)


class Compactor:
    def __init__(self, shards, book, ratio: float, metrics, clock=time.monotonic, name_of=str):
        self.name_of = name_of  # space index -> name, for the log
        self.shards = shards
        self.book = book
        self.ratio = ratio
        self.metrics = metrics
        self.clock = clock
        self.job: Job | None = None
        self.next_check = 0.0
        self.per_item = 0.0  # seconds to copy one vector, measured

    def dead(self, space: int) -> int:
        return self.shards.count(space) - self.book.held(space)

    def due(self) -> int | None:
        """A space whose shard should be rebuilt now, if any."""
        for space in list(self.shards.shards):
            count = self.shards.count(space)
            dead = count - self.book.held(space)
            if dead >= MIN_DEAD and dead > self.ratio * count:
                return space
        return None

    def touch(self, space: int, ids: np.ndarray) -> None:
        """The worker changed ``ids`` of ``space`` (insert, forget, lazy delete)."""
        if self.job is not None and self.job.space == space and len(ids):
            self.job.touched.append(np.array(ids, np.uint64))

    def step(self) -> bool:
        """Start a due compaction or copy one slice of the running one; True if it worked."""
        if self.job is None:
            now = self.clock()
            if now < self.next_check:
                return False
            self.next_check = now + CHECK_EVERY_S
            space = self.due()
            if space is None:
                return False
            self.start(space)
            return True
        self.copy_slice()
        if self.job.cursor >= len(self.job.labels):
            self.finish()
        return True

    def start(self, space: int) -> None:
        old = self.shards.shards[space]
        labels = np.asarray(old.get_ids_list(), np.uint64)
        labels = labels[self.book.held_here(space, labels)]
        self.job = Job(space, old, self.shards.blank(len(labels)), labels, self.clock(), old.index_file_size())
        log.info("slot %d: compacting the shard of space %s: %d of %d vectors live", self.book.slot,
                 self.name_of(space), len(labels), old.get_current_count())

    def copy_slice(self) -> None:
        job = self.job
        n = FIRST_CHUNK if not self.per_item else max(1, int(SLICE_S / self.per_item))
        chunk = job.labels[job.cursor:job.cursor + n]
        t0 = time.perf_counter()
        self._copy(chunk)
        job.cursor += len(chunk)
        if len(chunk):
            self.per_item = (time.perf_counter() - t0) / len(chunk)

    def _copy(self, labels: np.ndarray) -> None:
        """Copy the labels this slot holds live from the old index into the new one."""
        job = self.job
        labels = labels[self.book.held_here(job.space, labels)]
        if not len(labels):
            return
        try:
            vectors = job.old.get_items(labels)
        except RuntimeError:  # one of them is marked deleted in the old index: go one by one
            keep = []
            for label in labels.tolist():
                try:
                    job.old.get_items([label])
                    keep.append(label)
                except RuntimeError:
                    pass
            labels = np.asarray(keep, np.uint64)
            if not len(labels):
                return
            vectors = job.old.get_items(labels)
        self.shards.add(job.space, job.new, labels, np.asarray(vectors, np.float32))

    def finish(self) -> None:
        job = self.job
        if job.touched:
            touched = np.unique(np.concatenate(job.touched))
            live = self.book.held_here(job.space, touched)
            self._copy(touched[live])
            dead = touched[~live]
        else:
            dead = np.zeros(0, np.uint64)
        count_before = job.old.get_current_count()
        self.shards.replace(job.space, job.new)
        if len(dead):
            self.shards.delete(job.space, dead)
        after = job.new.index_file_size()
        seconds = self.clock() - job.started
        self.job = None
        m = self.metrics
        m.inc("compactions_total", memory_space=job.space)
        m.observe("compaction_duration_seconds", seconds)
        m.inc("compaction_reclaimed_bytes_total", max(0, job.before_bytes - after), memory_space=job.space)
        log.info("slot %d: compacted the shard of space %s: %d -> %d vectors, %d -> %d bytes in %.2fs",
                 self.book.slot, self.name_of(job.space), count_before, job.new.get_current_count(), job.before_bytes, after,
                 seconds)

    def abandon(self, space: int) -> None:
        """Drop a running compaction of ``space`` (its shard was replaced meanwhile)."""
        if self.job is not None and self.job.space == space:
            self.job = None
