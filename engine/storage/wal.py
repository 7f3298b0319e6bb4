"""Write-ahead log of one worker slot: the record format and the writer.

Files: ``<data-dir>/wal/slot-<i>.<g>.log``, one per *generation* g
(``engine.storage.walgen``), append-only, written by the worker of slot i only (one
writer; the supervisor's data-dir lock keeps a second instance out). A worker appends a batch after inserting it into its shard and
before committing its claim, so at any crash the batch is either in the log
(replayed by the next worker of the slot) or still claimed in its ring
(processed again by that worker). Replaying a batch that was also processed
again is harmless: hnswlib treats a known label in the same shard as an
update, not a second vector.

Record layout, formats 3 (written now) and 2 (little-endian)::

    off  size  field
    0    4     magic 0x334C4157 (the bytes "WAL3"), 0x324C4157 ("WAL2")
    4    4     payload length P, u32
    8    8     sequence: the record's index in its file (0, 1, 2, …), u64
    16   4     crc32 of the payload
    20   4     crc32 of bytes 0-19 (the header before this field)
    24   P     payload

Format 1 (written by earlier versions; still read, never written)::

    0    4     magic 0x314C4157 (the bytes "WAL1")
    4    4     payload length P, u32
    8    4     crc32 of the payload
    12   P     payload

Payload, formats 1 and 2: u16 name length N, name (ASCII, N bytes), u32
count C, u32 dim D, ids u64[C], vectors f32[C, D]. Format 3 adds each
operation's kind and stamps (forget and upsert, ``engine.ledger``): u16 N,
name, u32 C, u32 D, u8 kind (0 observe, 1 forget: then D is 0 and there are
no vectors), ids u64[C], stamps u64[C], vectors f32[C, D]. Records of the
older formats read as observations with stamp 0 (older than anything
stamped). A file may hold records of several formats (an old file appended
to); each record is read by its own magic.

Why format 2: format 1 has one checksum over the payload, so after a bad
record the reader could not trust its length nor tell where the next record
starts, and everything after it was cut off. The header checksum makes the
length trustworthy on its own (a record whose payload alone is damaged is
skipped by exactly its length) and lets a reader recognise a record start
when it scans past damaged bytes; the sequence tells it how many records a
damaged span held (the gap between the sequences on either side; 0 for
garbage that held none). Reading, resynchronising and what happens to
damaged bytes: ``engine.storage.walscan``.

``fsync``: ``always`` syncs every append; ``interval`` syncs when the last
sync is over a second old (checked at each append and when idle), so at most
about one second of inserted data is at risk on power loss; ``never`` leaves
it to the kernel.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = 0x314C4157  # format 1
MAGIC2 = 0x324C4157
MAGIC3 = 0x334C4157
OBSERVE, FORGET = 0, 1
HEADER = struct.Struct("<III")  # format 1: magic, length, payload crc
HEADER2 = struct.Struct("<IIQII")  # format 2: magic, length, sequence, payload crc, header crc
MAGIC_PREFIX = b"WAL"  # the first three bytes of both magics; the fourth is the format
MIN_PAYLOAD = 10  # u16 name length, u32 count, u32 dim: an empty batch of an empty name
MAX_PAYLOAD = 1 << 31
SYNC_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Frame:
    """What the bytes at ``start`` say about a record there, checked.

    ``known``: a record header is recognisable (format 2: magic and header
    checksum; format 1, which has no header checksum: magic and a plausible
    length). ``fits``: the declared record ends inside the file. ``intact``:
    all of that and the payload checksum matches."""
    version: int
    start: int
    payload_start: int
    end: int
    seq: int | None  # formats 2 and 3
    known: bool
    fits: bool
    intact: bool

    @property
    def trusted_length(self) -> bool:
        """The record's extent is certain even if its payload is damaged."""
        return self.version >= 2 and self.known and self.fits


def frame_at(buf, pos: int, size: int) -> Frame | None:
    """The record header at ``pos`` of ``buf[:size]`` (a bytes-like view); None
    where too few bytes are left for one or the magic is neither format's."""
    if pos + HEADER.size > size:
        return None
    magic, length = struct.unpack_from("<II", buf, pos)
    if magic in (MAGIC2, MAGIC3):
        if pos + HEADER2.size > size:
            return None
        _, _, seq, crc, head_crc = HEADER2.unpack_from(buf, pos)
        known = zlib.crc32(buf[pos:pos + 20]) == head_crc and MIN_PAYLOAD <= length < MAX_PAYLOAD
        body = pos + HEADER2.size
        version = 3 if magic == MAGIC3 else 2
    elif magic == MAGIC:
        _, _, crc = HEADER.unpack_from(buf, pos)
        seq, known, body, version = None, MIN_PAYLOAD <= length < MAX_PAYLOAD, pos + HEADER.size, 1
    else:
        return None
    fits = known and body + length <= size
    intact = fits and zlib.crc32(buf[body:body + length]) == crc
    return Frame(version, pos, body, body + length, seq, known, fits, intact)


def encode_parts(space: str, ids: np.ndarray, vectors: np.ndarray | None, seq: int,
                 stamps: np.ndarray, kind: int = OBSERVE) -> list:
    """A format-3 record as buffers for one ``writev``: ids, stamps and
    vectors are not copied (the ring's shared-memory views are written as
    they are). ``vectors`` None for a forget."""
    name = space.encode("ascii")
    count = len(ids)
    dim = 0 if vectors is None else vectors.shape[1]
    meta = struct.pack("<H", len(name)) + name + struct.pack("<IIB", count, dim, kind)
    parts = [meta, memoryview(np.ascontiguousarray(ids, dtype="<u8")).cast("B"),
             memoryview(np.ascontiguousarray(stamps, dtype="<u8")).cast("B")]
    if vectors is not None:
        parts.append(memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B"))
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    head = struct.pack("<IIQI", MAGIC3, sum(len(x) for x in parts), seq, crc)
    return [head + struct.pack("<I", zlib.crc32(head))] + parts


def decode(payload: bytes, version: int = 2) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, int]:
    """(space, ids, vectors, stamps, kind) of one record's payload; ValueError
    when it does not parse."""
    (n,) = struct.unpack_from("<H", payload, 0)
    name = payload[2:2 + n].decode("ascii")
    count, dim = struct.unpack_from("<II", payload, 2 + n)
    off = 2 + n + 8
    kind = OBSERVE
    if version >= 3:
        (kind,) = struct.unpack_from("<B", payload, off)
        off += 1
        if kind not in (OBSERVE, FORGET) or (kind == FORGET and dim):
            raise ValueError(f"record kind {kind} with dim {dim}")
    stamped = 8 * count if version >= 3 else 0
    if len(payload) != off + count * 8 + stamped + count * dim * 4:
        raise ValueError("payload length does not match its count and dim")
    ids = np.frombuffer(payload, "<u8", count, off).astype(np.uint64)
    off += count * 8
    if version >= 3:
        stamps = np.frombuffer(payload, "<u8", count, off).astype(np.uint64)
        off += count * 8
    else:
        stamps = np.zeros(count, np.uint64)
    vectors = np.frombuffer(payload, "<f4", count * dim, off).reshape(count, dim)
    return name, ids, vectors.astype(np.float32), stamps, int(kind)


def replay(path: str, apply, progress=None, cut_tail: bool = True, with_ops: bool = False):
    """``engine.storage.walscan.replay`` (imported here on use: walscan reads
    this module's format, so it cannot be imported at the top)."""
    from engine.storage import walscan
    return walscan.replay(path, apply, progress, cut_tail, with_ops)


class WalWriter:
    def __init__(self, path: str, fsync: str, clock=time.monotonic):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.path = path
        self.fsync_policy = fsync
        self.clock = clock
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.end = os.fstat(self.fd).st_size  # end of the last complete record
        # The engine always starts a fresh file (``WalLog``); reopening a
        # written one reads it once to continue its sequence.
        self.seq = 0
        if self.end:
            from engine.storage import walscan
            self.seq = walscan.next_sequence(path)
        self.torn = False  # a failed append left bytes after ``end`` not yet cut off
        self.last_sync = clock()
        self.dirty = False

    def append(self, space: str, ids: np.ndarray, vectors: np.ndarray | None, stamps: np.ndarray | None = None,
               kind: int = OBSERVE) -> tuple[int, float | None]:
        """Append one batch of one kind (``stamps`` None: all 0); returns
        (bytes written, fsync seconds or None).

        Raises OSError (ENOSPC, EFBIG, EIO) with the file cut back to its
        size before the call, so a failed append leaves no torn record in
        front of later good ones; the caller retries the same batch (with
        the same sequence)."""
        if self.torn:
            self._cut()
        if stamps is None:
            stamps = np.zeros(len(ids), np.uint64)
        parts = encode_parts(space, ids, vectors, self.seq, stamps, kind)
        total = sum(len(p) for p in parts)
        try:
            written = os.writev(self.fd, parts)
            if written < total:  # a short write (disk or file-size limit): finish or fail byte-wise
                rest = memoryview(b"".join(bytes(p) for p in parts))[written:]
                while rest:
                    rest = rest[os.write(self.fd, rest):]
            self.dirty = True
            synced = None
            if self.fsync_policy == "always" or (
                    self.fsync_policy == "interval" and self.clock() - self.last_sync >= SYNC_INTERVAL_S):
                synced = self.sync()
        except OSError:
            self.torn = True
            try:
                self._cut()
            except OSError:
                pass  # cut again before the next append (``torn`` stays set)
            raise
        self.end += total
        self.seq += 1
        return total, synced

    def _cut(self) -> None:
        """Truncate what a failed append left after the last complete record."""
        os.ftruncate(self.fd, self.end)
        self.torn = False

    def sync(self) -> float | None:
        if not self.dirty:
            return None
        t0 = time.perf_counter()
        os.fsync(self.fd)
        self.dirty = False
        self.last_sync = self.clock()
        return time.perf_counter() - t0

    def tick(self) -> float | None:
        """Called when idle: an ``interval`` log is synced once its data is a second old."""
        if self.fsync_policy == "interval" and self.dirty and self.clock() - self.last_sync >= SYNC_INTERVAL_S:
            return self.sync()
        return None

    def size(self) -> int:
        return self.end

    def close(self, sync: bool = False) -> None:
        """Sync (unless the policy is ``never``; always with ``sync``) and close."""
        if self.fd >= 0:
            try:
                if self.torn:
                    self._cut()
                if sync or self.fsync_policy != "never" and self.dirty:
                    os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1
