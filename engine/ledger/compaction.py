"""Compaction: rebuild a shard without its dead vectors, giving their memory back.

hnswlib's ``mark_deleted`` hides a vector and keeps its memory, and its
``replace_deleted`` reuse loses and duplicates labels (bench/hnsw_deletes.py
shows both). So a shard whose dead share (vectors forgotten, or replaced by a
newer observation in any shard: its element count minus the live keys the
identity table says it holds) passes ``--compact-ratio`` is rebuilt:

1. ``start``: list its labels, keep those the table says this slot holds,
   make an empty index sized for them;
2. ``step`` (the worker gives it about ``SHARE`` of its busy time, or
   ``BACKLOG_SHARE`` while records wait in its rings, in
   slices of about ``SLICE_S`` with recall answered between them): copy the
   next labels' vectors from the old index into the new one, skipping those
   no longer held here and those inserted since. Meanwhile inserts into the
   space go to the new index only and searches ask both
   (``engine.worker.shards.ShardSet.building``): no vector is inserted
   twice, and nothing is left to catch up at the end;
3. once every label is copied, the new index is swapped in and the old one
   freed: its memory goes back. The swap is a pointer change.

No snapshot starts while a compaction runs (the vectors inserted meanwhile
are in the new index only, which a snapshot does not write; the log holds
them), and a graceful stop completes a running one first (``complete``).
Single owner: the worker of the slot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("engram.worker")

SLICE_S = 0.005
# Share of a worker's busy time a running compaction gets (the rest inserts)
# while the worker keeps up with its rings, and while records wait in them
# (BACKLOG_SHARE: ingest first). With ingest going on, a rebuild of n live
# vectors takes about as long as inserting n / share of them.
SHARE = 1 / 3
BACKLOG_SHARE = 0.1
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
    cursor: int = 0


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

    def due(self) -> int | None:
        """A space whose shard should be rebuilt now, if any."""
        for space in list(self.shards.shards):
            count = self.shards.count(space)
            dead = count - self.book.held(space)
            if dead >= MIN_DEAD and dead > self.ratio * count:
                return space
        return None

    # -- the rebuild ------------------------------------------------------------
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
        self.job = Job(space, old, self.shards.build(space, labels), labels, self.clock())
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
        """Copy the labels this slot still holds live, and that were not
        inserted since the start, from the old index into the new one."""
        job = self.job
        fresh = self.shards.building[job.space].fresh
        labels = labels[self.book.held_here(job.space, labels)]
        if fresh:
            labels = labels[[label not in fresh for label in labels.tolist()]]
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
        count_before = job.old.get_current_count()
        # What the dead vectors took: the old index's bytes less its copied share.
        copied = len(job.labels)
        before = job.old.index_file_size()
        freed = int(before * (count_before - copied) / max(1, count_before))
        self.shards.replace(job.space)
        after = job.new.index_file_size()
        seconds = self.clock() - job.started
        self.job = None
        m = self.metrics
        m.inc("compactions_total", memory_space=job.space)
        m.observe("compaction_duration_seconds", seconds)
        m.inc("compaction_reclaimed_bytes_total", max(0, freed), memory_space=job.space)
        log.info("slot %d: compacted the shard of space %s: %d -> %d vectors, %d -> %d bytes in %.2fs",
                 self.book.slot, self.name_of(job.space), count_before, job.new.get_current_count(), before,
                 after, seconds)

    def complete(self) -> None:
        """Copy the rest of a running compaction now (a graceful stop, before its snapshot)."""
        while self.job is not None:
            self.step()
