"""Partition snapshots: the log prefix of a partition, kept in the object store.

A snapshot of partition ``p`` is the partition's batches up to a stream
sequence ``S``, as one object ``partition-<p>`` of the object store
``engram-<c>-snap`` whose description is JSON ``{"seq": S, "host",
"epoch", "ms"}``. Once uploaded, the stream may drop the partition's
messages up to ``S`` (``purge`` with ``subject`` and ``seq=S+1``, which
keeps ``S+1`` onwards): the snapshot plus the stream's rest is the
partition's whole history, which is what a new owner loads.

Why records and not HNSW files: a host's indexes mix partitions (shards
are per worker slot and space, spaces of many partitions share a slot), so
an index file of one partition does not exist; the records are what every
host can rebuild its own shards from through its own producer path. The
cost is rebuilding the graph on failover (the same as replaying the log);
the gain is a bounded stream and one object to fetch instead of many
messages.

Local file: the follower appends each message it applies (before queueing
it, skipping sequences already there) to ``<data-dir>/partitions/p<p>.rec``
(entries ``u64 seq, u32 length, body``), so the file always covers what
was applied; ``upload`` sends the file. Single writer: the follower.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import time

from engine.cluster import applier, names

log = logging.getLogger("engram.cluster")

_ENTRY = struct.Struct("<QI")


def entries(blob: bytes):
    """(seq, body) of each whole entry; a torn tail is ignored."""
    o = 0
    while o + _ENTRY.size <= len(blob):
        seq, n = _ENTRY.unpack_from(blob, o)
        if o + _ENTRY.size + n > len(blob):
            return
        yield seq, blob[o + _ENTRY.size:o + _ENTRY.size + n]
        o += _ENTRY.size + n


class Snapshots:
    def __init__(self, js, params, table, directory: str, engine, clock=time.time, record=None):
        self.js = js
        self.record = record or (lambda fn: None)  # fn(writer) on the follower's metric row
        self.engine = engine
        self.p = params
        self.table = table
        self.dir = directory
        self.clock = clock
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.last: dict[int, int] = {}       # last seq in the local file
        self.files: dict[int, io.BufferedWriter] = {}
        self.uploaded: dict[int, float] = {}  # partition -> time of the last upload
        self.failures = 0

    def path(self, p: int) -> str:
        return os.path.join(self.dir, f"p{p}.rec")

    def _file(self, p: int):
        f = self.files.get(p)
        if f is None:
            if p not in self.last:
                self.last[p] = 0
                if os.path.exists(self.path(p)):
                    with open(self.path(p), "rb") as fh:
                        for seq, _ in entries(fh.read()):
                            self.last[p] = seq
            f = self.files[p] = open(self.path(p), "ab")
        return f

    def note(self, p: int, seq: int, body: bytes) -> None:
        """Keep message ``seq`` of ``p`` (once) for the next snapshot."""
        f = self._file(p)
        if seq <= self.last[p]:
            return
        f.write(_ENTRY.pack(seq, len(body)))
        f.write(body)
        self.last[p] = seq

    async def upload(self, p: int) -> int:
        """Send the local file as the partition's snapshot, then purge what it
        covers from the stream; returns the covered sequence (0: nothing)."""
        f = self._file(p)
        f.flush()
        covered = self.last.get(p, 0)
        if covered == 0 or covered <= int(self.table.rows[p, 6]):
            return int(self.table.rows[p, 6])
        with open(self.path(p), "rb") as fh:
            blob = fh.read()
        from nats.js import api
        ms = int(self.clock() * 1000)
        desc = json.dumps({"seq": covered, "host": self.p.host_id, "ms": ms})
        try:
            store = await self.js.object_store(names.snapshot_bucket(self.p.cluster))
            await store.put(names.snapshot_object(p), blob, meta=api.ObjectMeta(
                name=names.snapshot_object(p), description=desc))
        except Exception:
            self.record(lambda w: w.inc("cluster_snapshot_uploads_total", result="failed"))
            raise
        self.record(lambda w: (w.inc("cluster_snapshot_uploads_total", result="ok"),
                               w.set("cluster_snapshot_last_upload_timestamp_seconds", ms / 1000)))
        # (a failed purge only leaves the stream longer: the snapshot is in place)
        await self.js.purge_stream(names.stream(self.p.cluster), subject=names.subject(self.p.cluster, p),
                                   seq=covered + 1)
        self.table.snapshot(p, covered, ms)
        self.uploaded[p] = self.clock()
        log.info("partition %d: snapshot up to stream sequence %d uploaded (%d bytes); stream prefix purged",
                 p, covered, len(blob))
        return covered

    def due(self, p: int) -> bool:
        interval = self.p.cluster_snapshot_interval
        if not interval:
            return False
        last = self.uploaded.setdefault(p, self.clock())
        return self.clock() - last >= interval and self.last.get(p, 0) > int(self.table.rows[p, 6])

    async def load(self, p: int, epoch: int, counters: dict | None = None) -> None:
        """Before applying a newly acquired partition: apply what the newest
        snapshot holds beyond this host's position, and keep it locally."""
        from nats.js.errors import NotFoundError, ObjectNotFoundError
        store = await self.js.object_store(names.snapshot_bucket(self.p.cluster))
        try:
            got = await store.get(names.snapshot_object(p))
        except (ObjectNotFoundError, NotFoundError):
            return
        try:
            covered = int(json.loads(got.info.description or "{}").get("seq", 0))
        except ValueError:
            covered = 0
        seq, off = names.split_position(self.table.next_pos(p))
        if covered < max(seq, 1):
            return  # this host already holds everything the snapshot covers
        applied = 0
        for s, body in entries(got.data or b""):
            if s < seq or s > covered:
                continue
            self.note(p, s, body)
            why = await applier.enqueue(self.engine, self.table, p, epoch, s, off if s == seq else 0, body,
                                        counters if counters is not None else {})
            if why is not None:
                return
            applied += 1
        self.table.set_position(p, names.position(covered + 1))
        self.table.snapshot(p, covered, int(json.loads(got.info.description or "{}").get("ms", 0)))
        log.info("partition %d: loaded snapshot up to stream sequence %d (%d batch(es) applied from it)",
                 p, covered, applied)
