"""Rebuilding a slot's shards at worker start: newest good snapshot + the log after it.

Steps (``recover``):

1. remove temp directories and unlisted snapshots (a write cut short);
2. take the snapshots of the manifest newest first; the first whose files
   match their checksums and load is adopted by the ``ShardSet``; a bad one
   is logged, counted (``snapshot_fallbacks_total``), dropped from the
   manifest and deleted, and the next older one is tried;
3. replay the log generations the adopted snapshot does not cover (>= its
   generation; all of them without a snapshot), in order, with progress in
   the log. A damaged record in the middle of a file is skipped and the
   records after it replayed; a torn or corrupt tail is cut off
   (``engine.storage.walscan``). Both are logged per file and counted,
   never fatal.

A space name read from disk is untrusted like any input: a snapshot shard or
a logged batch whose name does not validate (``engine.config.valid_space``)
is skipped, counted (``snapshot_shards_skipped_total``,
``wal_records_skipped_total``) and logged. It is never registered: the
control block keeps 64 bytes of a name, so an over-long name would become
another space's name, and a recall there would return its ids.

A snapshot covers generations < g and the log holds every batch since, so
replaying after it adds exactly what is missing; a batch present in both (a
claim processed again after a crash) is an update of the same label in the
same shard, never a second vector (hnswlib ``add_items`` on a known label).

Forget and upsert (``engine.ledger``): with a ``book``, the snapshot's
ledger (``engine.storage.ledgerfile``) puts the slot's rows back into the
identity table and the shards' deleted marks back into the ``ShardSet``,
and each logged operation is applied through the table's rule (newest stamp
wins) as the worker applied it. Every slot recovers at once into the one
table, so the order between slots does not matter: the newest stamp wins
whichever slot replays first. A snapshot from before ledgers existed counts
every vector it holds as live at stamp 0. ``Recovered.gen_floor`` gives the
smallest stamp replayed from each log generation (the slot's floor).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from engine.config import valid_space
from engine.storage import snapshots
from engine.errors import SnapshotError
from engine.ledger.book import OBSERVE, apply_ops
from engine.storage.snapshots import Entry
from engine.storage.walscan import Replayed, replay
from engine.storage.walgen import generations

log = logging.getLogger("engram.worker")

PROGRESS_LOG_S = 5.0
MAX_SPANS_LOGGED = 10  # damaged spans listed one by one in a file's log line


@dataclass
class Recovered:
    entries: list[Entry] = field(default_factory=list)  # good snapshots, oldest first
    loaded: Entry | None = None
    first_generation: int = 1  # a new log generation must be at least this
    uncovered_bytes: int = 0  # log bytes not covered by the newest snapshot
    records: int = 0
    vectors: int = 0
    skipped_shards: int = 0  # snapshot shards whose space name does not validate
    skipped_records: int = 0  # logged batches whose space name does not validate
    gen_floor: dict = field(default_factory=dict)  # log generation -> smallest stamp in it


def _candidates(sdir: str, slot: int) -> list[Entry]:
    try:
        return snapshots.read_manifest(sdir)
    except SnapshotError as exc:
        # The manifest is written atomically, so this is outside damage: fall
        # back to the complete snapshot directories themselves.
        found = []
        for name in os.listdir(sdir):
            if name.startswith("gen-") and name[4:].isdigit():
                found.append(Entry(int(name[4:]), name))
        log.error("slot %d: %s; trying the snapshot directories found instead: %s", slot, exc,
                  [e.dir for e in sorted(found, key=lambda e: e.generation)] or "none")
        return sorted(found, key=lambda e: e.generation)


def recover(data_dir: str, slot: int, meta: dict, shards, register, publish, metrics,
            heartbeat=lambda: None, delay_s: float = 0.0, progress=lambda share: None, book=None) -> Recovered:
    """Load the newest good snapshot into ``shards`` and replay the log after it.
    ``register(name) -> space index``; ``publish(space, count)`` after each change;
    ``progress(share)``: the share of the bytes to read done so far (a snapshot
    file at a time, a log generation at a time)."""
    started = time.monotonic()
    sdir = snapshots.slot_dir(data_dir, slot)
    out = Recovered()
    entries = _candidates(sdir, slot) if os.path.isdir(sdir) else []
    removed = snapshots.cleanup(sdir, entries)
    if removed:
        log.info("slot %d: removed %d unfinished or unlisted snapshot file(s): %s", slot, len(removed), removed)
    bad: list[Entry] = []
    wal_bytes = sum(_size(p) for _, p in generations(data_dir, slot))
    total = max(1, wal_bytes + (entries[-1].bytes if entries else 0))
    for entry in reversed(entries):
        path = os.path.join(sdir, entry.dir)
        try:
            loaded = snapshots.load(path, meta)
            ledger = snapshots.load_ledger(path)
        except SnapshotError as exc:
            bad.append(entry)
            metrics.inc("snapshot_fallbacks_total", worker_id=slot)
            log.error("slot %d: snapshot %s is corrupt or incomplete (%s); falling back to %s", slot,
                      entry.dir, exc, "the previous snapshot" if entry is not entries[0] else
                      "the write-ahead log alone")
            heartbeat()
            continue
        for name, index in loaded:
            if not valid_space(name):
                out.skipped_shards += 1
                metrics.inc("snapshot_shards_skipped_total", worker_id=slot)
                log.error("slot %d: snapshot %s holds a shard of %d vectors for %.80r, which is not a valid "
                          "memory-space name; skipped, not loaded into any space", slot, entry.dir,
                          index.get_current_count(), name)
                continue
            space = register(name)
            dead = ledger.dead(name) if ledger is not None else ()
            publish(space, shards.adopt(space, index, dead))
            if book is not None and ledger is None:
                labels = np.asarray(index.get_ids_list(), np.uint64)
                book.table.apply(space, labels, np.zeros(len(labels), np.uint64), slot)
        if book is not None and ledger is not None:
            _restore_rows(slot, ledger, register, book, metrics)
        out.loaded = entry
        progress(min(1.0, entry.bytes / total))
        if delay_s:
            time.sleep(delay_s)  # test hook (engine.config.hooks): a load that takes long
        log.info("slot %d: loaded snapshot %s (%d vectors) in %.1fs", slot, entry.dir,
                 sum(i.get_current_count() for _, i in loaded), time.monotonic() - started)
        break
    out.entries = [e for e in entries if e not in bad]
    if bad:
        for e in bad:
            shutil.rmtree(os.path.join(sdir, e.dir), ignore_errors=True)
        snapshots.write_manifest(sdir, slot, out.entries)
        if out.loaded is None and len(entries) >= snapshots.KEEP:
            log.error("slot %d: no snapshot could be loaded and the log before generation %d was deleted "
                      "when the snapshots were taken; vectors logged before it are lost", slot,
                      entries[0].generation)
    out.first_generation = max([e.generation for e in entries] + [1])
    start_gen = out.loaded.generation if out.loaded is not None else 0
    heartbeat()
    done = out.loaded.bytes if out.loaded is not None else 0

    def generation_done(path: str) -> None:
        nonlocal done
        done += _size(path)
        progress(min(1.0, done / total))
    _replay(slot, [(g, p) for g, p in generations(data_dir, slot) if g >= start_gen], register, publish,
            shards, metrics, heartbeat, out, generation_done, book)
    out.uncovered_bytes = sum(os.path.getsize(p) for g, p in generations(data_dir, slot) if g >= start_gen)
    if out.records or out.loaded is not None:
        log.info("slot %d: recovered %d vectors (%s + %d vectors from %d logged batches) in %.1fs", slot,
                 sum(shards.count(s) for s in shards.shards), out.loaded.dir if out.loaded else "no snapshot",
                 out.vectors, out.records, time.monotonic() - started)
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _restore_rows(slot: int, ledger, register, book, metrics) -> None:
    """Put a snapshot's identity-table rows of this slot back (newest stamp wins)."""
    for name, ids, stamps, forgotten in ledger.rows():
        if not valid_space(name):
            metrics.inc("snapshot_shards_skipped_total", worker_id=slot)
            log.error("slot %d: snapshot ledger holds %d row(s) for %.80r, which is not a valid memory-space "
                      "name; skipped", slot, len(ids), name)
            continue
        space = register(name)
        book.table.apply(space, ids[~forgotten], stamps[~forgotten], slot)
        book.table.apply(space, ids[forgotten], stamps[forgotten], -slot - 1)


def _replay(slot, gens, register, publish, shards, metrics, heartbeat, out: Recovered,
            generation_done=lambda path: None, book=None) -> None:
    last_log = time.monotonic()

    skipped: dict[str, list[int]] = {}  # invalid name -> [batches, vectors], per generation
    gen = 0

    def apply(name: str, ids: np.ndarray, vectors: np.ndarray, stamps: np.ndarray, kind: int) -> None:
        if not valid_space(name):
            counts = skipped.setdefault(name, [0, 0])
            counts[0] += 1
            counts[1] += len(ids)
            return
        space = register(name)
        if len(stamps):
            out.gen_floor[gen] = min(out.gen_floor.get(gen, int(stamps.min())), int(stamps.min()))
        if book is None:
            if kind == OBSERVE:
                publish(space, shards.insert(space, ids, vectors))
            return
        apply_ops(book, shards, space, kind, ids, stamps, vectors,
                  lambda sp, chosen: publish(sp, shards.insert(sp, ids[chosen], vectors[chosen])))

    def progress(stats) -> None:
        nonlocal last_log
        heartbeat()  # a long replay is not a hung worker
        if time.monotonic() - last_log >= PROGRESS_LOG_S:
            last_log = time.monotonic()
            log.info("slot %d: replaying write-ahead log generation %d: %d batches, %d vectors so far",
                     slot, gen, out.records + stats.records, out.vectors + stats.vectors)

    for gen, path in gens:
        skipped.clear()
        stats = replay(path, apply, progress, with_ops=True)
        bad_records = sum(c[0] for c in skipped.values())
        out.records += stats.records - bad_records
        out.vectors += stats.vectors - sum(c[1] for c in skipped.values())
        out.skipped_records += bad_records
        metrics.inc("wal_records_recovered_total", stats.records - bad_records, worker_id=slot)
        if bad_records:
            metrics.inc("wal_records_skipped_total", bad_records, worker_id=slot, reason="invalid_space")
        for name, (batches, vectors) in skipped.items():
            log.error("slot %d: write-ahead log %s has %d batch(es), %d vectors, for %.80r, which is not a "
                      "valid memory-space name; skipped, not inserted into any space", slot,
                      os.path.basename(path), batches, vectors, name)
        _count_damage(slot, path, stats, metrics)
        generation_done(path)


def _count_damage(slot: int, path: str, stats: Replayed, metrics) -> None:
    """Metrics and one log line for what a file's replay skipped or cut off."""
    for d in stats.skipped:
        metrics.inc("wal_records_skipped_total", d.records, worker_id=slot, reason=d.reason)
        metrics.inc("wal_bytes_skipped_total", d.length, worker_id=slot, reason=d.reason)
    if stats.dropped_bytes:
        metrics.inc("wal_records_dropped_total", stats.dropped_records, worker_id=slot)
        metrics.inc("wal_bytes_dropped_total", stats.dropped_bytes, worker_id=slot)
        metrics.inc("wal_truncations_total", worker_id=slot)
    parts = []
    if stats.skipped:
        spans = " ".join(f"[{d.reason} at byte {d.offset}: {d.records} record(s), {d.length} bytes]"
                         for d in stats.skipped[:MAX_SPANS_LOGGED])
        more = len(stats.skipped) - MAX_SPANS_LOGGED
        parts.append(f"skipped {stats.skipped_records()} damaged record(s), {stats.skipped_bytes()} bytes, "
                     f"in the middle and left them in place {spans}{f' and {more} more' if more > 0 else ''}")
    if stats.dropped_bytes:
        parts.append(f"cut off a torn or corrupt tail of {stats.dropped_bytes} bytes "
                     f"({stats.dropped_records} record header(s) in it)")
    if parts:
        log.warning("slot %d: write-ahead log %s: %s; replayed %d intact batches (%d vectors)", slot,
                    os.path.basename(path), "; ".join(parts), stats.records, stats.vectors)
