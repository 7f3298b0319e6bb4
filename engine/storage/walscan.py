"""Reading a write-ahead log back: every intact record, past damaged ones.

Record format: ``engine.storage.wal``. ``replay`` reads a file front to back
and calls ``apply(space, ids, vectors)`` for each intact record, in order.
Damage is sorted by where it is:

* **In the middle** (an intact record follows it): skipped and counted,
  and the records after it are replayed. At a record whose format-2 header
  is intact but whose payload is not, the reader skips exactly that
  record's length (``corrupt_payload``). Where no header can be trusted
  (damaged header, bytes that are no record at all, a format-1 record,
  whose length nothing vouches for), it scans forward for the next
  position holding a whole intact record: magic, header checksum,
  plausible length, payload checksum (``corrupt_header``).
* **At the tail** (no intact record follows it): a record torn by a crash
  in the middle of an append, or damage in the last records. It is cut off
  (the file is truncated after the last intact record and synced), as the
  writer cuts a failed append, so later appends follow intact data.

Damaged middles are left in the file, not rewritten. Rewriting would copy
the whole generation (up to ``--snapshot-wal-bytes`` and more) at start,
needs as much free disk again at the moment it is least likely to be
there, and would destroy the evidence; leaving them costs one forward scan
over the damaged span at each replay, which finds the same span again (and
reports it again) until a snapshot covers the generation and retention
deletes it. Appending after them is safe: the reader resynchronises on the
next intact record whatever precedes it.

Counting what is lost, per file (``Replayed``):

* a ``corrupt_payload`` span is one record;
* a ``corrupt_header`` span holds as many records as the sequences on
  either side leave out (the record before it, or -1 at the start of the
  file, and the record after it): exact for format 2, including 0 for
  inserted garbage. Where a side has no sequence (format 1), a span that is
  exactly one format-1 record's declared length is that record with a
  damaged payload; otherwise it counts the record headers still
  recognisable in it, at least one;
* the tail counts the record headers recognisable in it (a record torn
  inside its header is not recognisable and counts 0).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from engine.storage.wal import MAGIC_PREFIX, Frame, decode, frame_at

CORRUPT_HEADER, CORRUPT_PAYLOAD = "corrupt_header", "corrupt_payload"


@dataclass
class Damage:
    """A damaged span in the middle of a log: skipped, left in place."""
    offset: int
    length: int
    reason: str  # CORRUPT_HEADER or CORRUPT_PAYLOAD
    records: int  # records lost in it


@dataclass
class Replayed:
    records: int = 0
    vectors: int = 0
    skipped: list[Damage] = field(default_factory=list)
    dropped_bytes: int = 0  # the torn or corrupt tail (cut off, unless ``cut_tail`` was False)
    dropped_records: int = 0  # record headers recognisable in that tail

    def skipped_records(self, reason: str | None = None) -> int:
        return sum(d.records for d in self.skipped if reason in (None, d.reason))

    def skipped_bytes(self, reason: str | None = None) -> int:
        return sum(d.length for d in self.skipped if reason in (None, d.reason))


@dataclass
class _Span:
    """Damage found since the last intact record: middle or tail is not known yet."""
    start: int
    end: int
    reason: str
    seq: int | None = None  # a corrupt_payload record's own sequence (its header is intact)
    declared_end: int | None = None  # where a format-1 header at ``start`` says its record ends


class _Walker:
    """Iterates ``(seq, space, ids, vectors)`` for each intact record and
    ``Damage`` for each middle span, in file order; afterwards ``tail`` is
    where the damaged tail begins (``size`` if none) and ``tail_records``
    counts the headers recognisable in it. ``buf`` is an mmap of the file."""

    def __init__(self, buf: mmap.mmap, size: int):
        self.buf, self.size = buf, size
        self.tail, self.tail_records = size, 0

    def __iter__(self):
        view = memoryview(self.buf)
        try:
            yield from self._walk(view)
        finally:
            view.release()  # before the caller closes the mmap

    def _walk(self, view):
        pending: list[_Span] = []
        last_seq: int | None = -1  # sequence of the last intact record; -1 before the first
        pos = 0
        while pos < self.size:
            f = frame_at(view, pos, self.size)
            if f is not None and f.intact:
                record = self._decode(view, f)
                if record is not None:
                    yield from self._settle(view, pending, last_seq, f.seq)
                    pending = []
                    yield (f.seq,) + record
                    last_seq, pos = f.seq, f.end
                    continue
            if f is not None and f.trusted_length:
                # Checksums disagree with the payload (or it does not parse): skip exactly it.
                pending.append(_Span(pos, f.end, CORRUPT_PAYLOAD, seq=f.seq))
                pos = f.end
                continue
            nxt = self._resync(view, pos + 1)
            declared = f.end if f is not None and f.version == 1 and f.known else None
            pending.append(_Span(pos, nxt, CORRUPT_HEADER, declared_end=declared))
            pos = nxt
        if pending:
            self.tail = pending[0].start
            self.tail_records = self._recognisable(view, self.tail, self.size)

    @staticmethod
    def _decode(view, f: Frame):
        try:
            return decode(bytes(view[f.payload_start:f.end]), f.version)
        except (ValueError, UnicodeDecodeError, struct.error):
            return None  # checksums match but the payload does not parse: treated as damaged

    def _resync(self, view, start: int) -> int:
        """The first offset >= ``start`` where a whole intact record begins, or ``size``."""
        i = start
        while True:
            i = self.buf.find(MAGIC_PREFIX, i, self.size)
            if i < 0:
                return self.size
            f = frame_at(view, i, self.size)
            if f is not None and f.intact and self._decode(view, f) is not None:
                return i
            i += 1

    def _recognisable(self, view, start: int, end: int) -> int:
        """Record headers recognisable in ``[start, end)``."""
        count, i = 0, start
        while True:
            i = self.buf.find(MAGIC_PREFIX, i, end)
            if i < 0:
                return count
            f = frame_at(view, i, self.size)
            count += f is not None and f.known
            i += 1

    def _settle(self, view, pending: list[_Span], before: int | None, after: int | None):
        """The spans between two intact records (sequences ``before``, ``after``) as ``Damage``."""
        for k, span in enumerate(pending):
            if span.reason == CORRUPT_PAYLOAD:
                yield Damage(span.start, span.end - span.start, CORRUPT_PAYLOAD, 1)
                before = span.seq
                continue
            # The next known sequence: a following corrupt_payload record's, else the intact record's.
            nxt = next((s.seq for s in pending[k + 1:] if s.reason == CORRUPT_PAYLOAD), after)
            reason = CORRUPT_HEADER
            if before is not None and nxt is not None and nxt > before:
                records = nxt - before - 1
            elif span.declared_end == span.end:
                records, reason = 1, CORRUPT_PAYLOAD  # a format-1 record whose length led to an intact one
            else:
                records = max(1, self._recognisable(view, span.start, span.end))
            yield Damage(span.start, span.end - span.start, reason, records)
            before = None


def replay(path: str, apply, progress=None, cut_tail: bool = True, with_ops: bool = False) -> Replayed:
    """Call ``apply(space, ids, vectors)`` (with ``with_ops``: ``apply(space,
    ids, vectors, stamps, kind)``) for each intact record, in order;
    skip damaged ones in the middle and cut off a damaged tail (unless
    ``cut_tail`` is False: a reader of a log still being written must not).
    ``progress(stats)`` is called after each record."""
    stats = Replayed()
    tail = size = _size(path)
    if size:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as buf:
            walker = _Walker(buf, size)
            items = iter(walker)
            try:
                for item in items:
                    if isinstance(item, Damage):
                        stats.skipped.append(item)
                        continue
                    _, space, ids, vectors, stamps, kind = item
                    if with_ops:
                        apply(space, ids, vectors, stamps, kind)
                    else:
                        apply(space, ids, vectors)
                    stats.records += 1
                    stats.vectors += len(ids)
                    if progress is not None:
                        progress(stats)
            finally:
                items.close()  # releases its view of the mmap even if ``apply`` raised
            tail, stats.dropped_records = walker.tail, walker.tail_records
    stats.dropped_bytes = size - tail
    if tail < size and cut_tail:
        with open(path, "r+b") as fh:
            fh.truncate(tail)
            os.fsync(fh.fileno())
    return stats


def next_sequence(path: str) -> int:
    """The sequence a record appended to ``path`` gets: one past the last
    intact format-2 record's (0 if there is none)."""
    size, last = _size(path), -1
    if size:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as buf:
            items = iter(_Walker(buf, size))
            try:
                for item in items:
                    if not isinstance(item, Damage) and item[0] is not None:
                        last = item[0]
            finally:
                items.close()
    return last + 1


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
