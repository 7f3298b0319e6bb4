"""Write-ahead log of one worker slot: every batch it inserted, replayable.

Files: ``<data-dir>/wal/slot-<i>.<g>.log``, one per *generation* g
(``engine.storage.walgen``), append-only, written by the worker of slot i only (one
writer; the supervisor's data-dir lock keeps a second instance out). A worker appends a batch after inserting it into its shard and
before committing its claim, so at any crash the batch is either in the log
(replayed by the next worker of the slot) or still claimed in its ring
(processed again by that worker). Replaying a batch that was also processed
again is harmless: hnswlib treats a known label in the same shard as an
update, not a second vector.

Record layout (little-endian)::

    off  size   field
    0    4      magic   0x314C4157 ("WAL1")
    4    4      payload length P
    8    4      crc32 of the payload
    12   P      payload: u16 name length N, name (ASCII, N bytes), u32 count C,
                u32 dim D, ids u64[C], vectors f32[C, D]

Reading stops at the first record that is short, has a bad magic, an
impossible length or a checksum mismatch (a torn or corrupt tail); the file
is truncated there so later appends follow good data, and the number of
bytes dropped is reported. Recovery never fails on damage: it replays what
is intact.

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

MAGIC = 0x314C4157
HEADER = struct.Struct("<III")
MAX_PAYLOAD = 1 << 31
SYNC_INTERVAL_S = 1.0


@dataclass
class Replayed:
    records: int = 0
    vectors: int = 0
    dropped_bytes: int = 0


def encode_parts(space: str, ids: np.ndarray, vectors: np.ndarray) -> list:
    """A record as buffers for one ``writev``: the ids and vectors are not
    copied (the ring's shared-memory views are written as they are)."""
    name = space.encode("ascii")
    count, dim = vectors.shape
    meta = struct.pack("<H", len(name)) + name + struct.pack("<II", count, dim)
    id_bytes = memoryview(np.ascontiguousarray(ids, dtype="<u8")).cast("B")
    vec_bytes = memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B")
    crc = zlib.crc32(vec_bytes, zlib.crc32(id_bytes, zlib.crc32(meta)))
    length = len(meta) + len(id_bytes) + len(vec_bytes)
    return [HEADER.pack(MAGIC, length, crc), meta, id_bytes, vec_bytes]


def decode(payload: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    (n,) = struct.unpack_from("<H", payload, 0)
    name = payload[2:2 + n].decode("ascii")
    count, dim = struct.unpack_from("<II", payload, 2 + n)
    off = 2 + n + 8
    if len(payload) != off + count * 8 + count * dim * 4:
        raise ValueError("payload length does not match its count and dim")
    ids = np.frombuffer(payload, "<u8", count, off).astype(np.uint64)
    vectors = np.frombuffer(payload, "<f4", count * dim, off + count * 8).reshape(count, dim)
    return name, ids, vectors.astype(np.float32)


def replay(path: str, apply, progress=None) -> Replayed:
    """Call ``apply(space, ids, vectors)`` for each intact record, in order;
    truncate a damaged tail. ``progress(stats)`` is called after each record."""
    stats = Replayed()
    if not os.path.exists(path):
        return stats
    size = os.path.getsize(path)
    good = 0
    with open(path, "rb") as fh:
        while good < size:
            head = fh.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            magic, length, crc = HEADER.unpack(head)
            if magic != MAGIC or not 0 < length < MAX_PAYLOAD or good + HEADER.size + length > size:
                break
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            try:
                space, ids, vectors = decode(payload)
            except (ValueError, UnicodeDecodeError, struct.error):
                break
            apply(space, ids, vectors)
            good += HEADER.size + length
            stats.records += 1
            stats.vectors += len(ids)
            if progress is not None:
                progress(stats)
    if good < size:
        stats.dropped_bytes = size - good
        with open(path, "r+b") as fh:
            fh.truncate(good)
            os.fsync(fh.fileno())
    return stats


class WalWriter:
    def __init__(self, path: str, fsync: str, clock=time.monotonic):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.path = path
        self.fsync_policy = fsync
        self.clock = clock
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.end = os.fstat(self.fd).st_size  # end of the last complete record
        self.torn = False  # a failed append left bytes after ``end`` not yet cut off
        self.last_sync = clock()
        self.dirty = False

    def append(self, space: str, ids: np.ndarray, vectors: np.ndarray) -> tuple[int, float | None]:
        """Append one batch; returns (bytes written, fsync seconds or None).

        Raises OSError (ENOSPC, EFBIG, EIO) with the file cut back to its
        size before the call, so a failed append leaves no torn record in
        front of later good ones; the caller retries the same batch."""
        if self.torn:
            self._cut()
        parts = encode_parts(space, ids, vectors)
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
