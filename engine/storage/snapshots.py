"""Snapshots of one slot's HNSW shards on disk: write, verify, load, and the manifest.

Layout, per worker slot i::

    <data-dir>/snapshots/slot-<i>/manifest.json     which snapshots are good (below)
    <data-dir>/snapshots/slot-<i>/gen-<g>/          one snapshot: covers WAL generations < g
        <space>.hnsw                                hnswlib ``save_index`` of that space's shard
        ledger.npz                                  the slot's identity-table rows and deleted
                                                    marks (engine.storage.ledgerfile)
        checksums.json                              per file: space, vectors, bytes, crc32;
                                                    "ledger": bytes, crc32 of ledger.npz
    <data-dir>/snapshots/slot-<i>/tmp-<g>-<pid>/    being written (removed at start if left over)

Writing (``write``): each shard is saved into the temp directory, the file
is read back to check it is complete (hnswlib's ``save_index`` does not
report a failed write: ``check_hnsw_file`` walks the saved structure) and
to compute its CRC-32, then synced; the checksums file is written and
synced, the directory renamed to ``gen-<g>`` and its parent synced. A
snapshot directory is therefore either complete or absent.

Manifest (``write_manifest``: temp file, fsync, rename, fsync of the
directory; a torn temp file is ignored)::

    {"format": 1, "slot": i,
     "snapshots": [{"generation": g, "dir": "gen-<g>", "vectors": n, "bytes": b,
                    "created": unix seconds, "seconds": write time}, ...],   oldest first
     "wal_from": generation of the oldest log file still needed}

Retention (``retain``): the newest ``KEEP`` (2) snapshots. With two, the log
generations below the older one's are deleted; with one, no log is deleted
(if that snapshot turns out corrupt, the whole log rebuilds the shards).
So a corrupt newest snapshot falls back to the older one plus the log.

Single writer: the worker of the slot (its snapshot child only writes the
temp directory and renames it).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from dataclasses import dataclass

import hnswlib

from engine.errors import SnapshotError
from engine.storage import ledgerfile
from engine.fsutil import fsync_dir

FORMAT = 1
KEEP = 2
CHECKSUMS = "checksums.json"
MANIFEST = "manifest.json"
CHUNK = 8 << 20
# hnswlib (hnswalg.h saveIndex): offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData (size_t each), maxlevel,
# enterpoint_node (int each), maxM, maxM0, M (size_t), mult (double),
# ef_construction (size_t); then count * size_data_per_element bytes of level 0;
# then per element a u32 size and that many bytes of upper-level links.
HNSW_HEADER = struct.Struct("<QQQQQQiiQQQdQ")


@dataclass
class Entry:
    generation: int
    dir: str
    vectors: int = 0
    bytes: int = 0
    created: float = 0.0
    seconds: float = 0.0


def slot_dir(data_dir: str, slot: int) -> str:
    return os.path.join(data_dir, "snapshots", f"slot-{slot}")


def snapshot_name(gen: int) -> str:
    return f"gen-{gen}"


# -- the manifest -----------------------------------------------------------------
def write_json_atomic(path: str, obj) -> None:
    """Replace ``path`` with ``obj`` as JSON so a crash leaves the old or the new file."""
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)  # a torn leftover of a crash: start over, owner-only
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        data = json.dumps(obj, indent=1).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def read_manifest(sdir: str) -> list[Entry]:
    """The good snapshots of a slot, oldest first ([] when there is no manifest).
    Raises SnapshotError if the manifest exists but is unreadable."""
    path = os.path.join(sdir, MANIFEST)
    try:
        with open(path) as fh:
            raw = json.load(fh)
        return [Entry(**{k: e[k] for k in Entry.__dataclass_fields__ if k in e})
                for e in raw["snapshots"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: unreadable ({exc})") from None


def write_manifest(sdir: str, slot: int, entries: list[Entry]) -> None:
    wal_from = entries[0].generation if len(entries) >= KEEP else 0
    write_json_atomic(os.path.join(sdir, MANIFEST), {
        "format": FORMAT, "slot": slot, "snapshots": [e.__dict__ for e in entries], "wal_from": wal_from})


def retain(entries: list[Entry]) -> tuple[list[Entry], list[Entry], int]:
    """(kept, dropped, log generations below this may go) for entries oldest first."""
    kept, dropped = entries[-KEEP:], entries[:-KEEP]
    return kept, dropped, (kept[0].generation if len(kept) >= KEEP else 0)


def cleanup(sdir: str, entries: list[Entry]) -> list[str]:
    """Remove temp directories and snapshots the manifest does not list
    (a write cut short, or one finished after its worker died)."""
    listed = {e.dir for e in entries} | {MANIFEST}
    removed = []
    try:
        names = os.listdir(sdir)
    except FileNotFoundError:
        return []
    for name in names:
        if name in listed:
            continue
        path = os.path.join(sdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                continue
        removed.append(name)
    return removed


# -- one snapshot -----------------------------------------------------------------
def _crc_file(path: str, expect_count: int | None = None) -> tuple[int, int, int]:
    """(bytes, crc32, vectors) of a saved hnswlib index; SnapshotError unless its
    structure is complete (every byte hnswlib wrote, and nothing more)."""
    with open(path, "rb") as fh:
        head = fh.read(HNSW_HEADER.size)
        if len(head) < HNSW_HEADER.size:
            raise SnapshotError(f"{path}: shorter than an hnswlib header")
        fields = HNSW_HEADER.unpack(head)
        max_elements, count, per_element = fields[1], fields[2], fields[3]
        if count > max_elements or not 0 < per_element < 1 << 24:
            raise SnapshotError(f"{path}: implausible header (count {count}, max {max_elements})")
        if expect_count is not None and count != expect_count:
            raise SnapshotError(f"{path}: holds {count} vectors, expected {expect_count}")
        crc = zlib.crc32(head)
        left = count * per_element
        while left:
            block = fh.read(min(CHUNK, left))
            if not block:
                raise SnapshotError(f"{path}: level 0 cut short")
            crc = zlib.crc32(block, crc)
            left -= len(block)
        links = fh.read()
    crc = zlib.crc32(links, crc)
    off = 0
    for _ in range(count):
        if off + 4 > len(links):
            raise SnapshotError(f"{path}: link lists cut short")
        (n,) = struct.unpack_from("<I", links, off)
        off += 4 + n
    if off != len(links):
        raise SnapshotError(f"{path}: {len(links) - off} bytes beyond the index structure")
    return HNSW_HEADER.size + count * per_element + len(links), crc, count


def _libc_sync_file_range():
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        return fn
    except (OSError, AttributeError):
        return None


_SYNC_FILE_RANGE = _libc_sync_file_range()
WRITEBACK_CHUNK = 2 << 20
_SFR_WAIT_WRITE_WAIT = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER


def _write_back(path: str) -> None:
    """Write a new file's pages to disk a few MiB at a time before its fsync.

    One fsync of a whole snapshot makes the file system commit its journal
    with hundreds of MiB behind it, and the worker's own log fsync waits for
    that commit (ext4 ``data=ordered``): a stall of the insert path for as
    long as the write takes. Written back in small steps (RocksDB's
    ``bytes_per_sync`` does the same), each commit the worker may wait on
    carries at most one step. Without ``sync_file_range`` (not Linux) the
    final fsync does it all."""
    if _SYNC_FILE_RANGE is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for off in range(0, size, WRITEBACK_CHUNK):
            if _SYNC_FILE_RANGE(fd, off, WRITEBACK_CHUNK, _SFR_WAIT_WRITE_WAIT) != 0:
                return  # not supported here: the fsync that follows covers it
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain_crc(path: str) -> tuple[int, int]:
    crc, n = 0, 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            crc, n = zlib.crc32(block, crc), n + len(block)
    return n, crc


def write(sdir: str, gen: int, shards: list[tuple[str, hnswlib.Index]], meta: dict,
          before_rename=None, ledger=None) -> Entry:
    """Write a complete snapshot ``gen-<gen>`` of ``shards`` ([(space name, index)]).
    Runs in the snapshot child (or in the worker at a graceful stop). Raises
    OSError or SnapshotError with nothing left behind but a temp directory
    that this removes on the way out (or the next start does)."""
    started = time.monotonic()
    os.makedirs(sdir, mode=0o700, exist_ok=True)
    tmp = os.path.join(sdir, f"tmp-{gen}-{os.getpid()}")
    final = os.path.join(sdir, snapshot_name(gen))
    os.mkdir(tmp, 0o700)
    try:
        files, total, vectors = [], 0, 0
        for space, index in shards:
            name = f"{space}.hnsw"
            path = os.path.join(tmp, name)
            count = index.get_current_count()
            index.save_index(path)
            _write_back(path)
            nbytes, crc, _ = _crc_file(path, count)
            _fsync_file(path)
            files.append({"space": space, "file": name, "vectors": count, "bytes": nbytes, "crc32": crc})
            total += nbytes
            vectors += count
        extra = {}
        if ledger is not None:
            lpath = ledgerfile.write(tmp, ledger() if callable(ledger) else ledger)
            nbytes, crc = _plain_crc(lpath)
            extra["ledger"] = {"file": ledgerfile.FILE, "bytes": nbytes, "crc32": crc}
        write_json_atomic(os.path.join(tmp, CHECKSUMS),
                          {"format": FORMAT, "generation": gen, **meta, "files": files, **extra})
        if before_rename is not None:
            before_rename(tmp)
        if os.path.exists(final):  # a leftover of a run that died before its manifest update
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(sdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Entry(gen, snapshot_name(gen), vectors, total, time.time(), time.monotonic() - started)


def verify(path: str, meta: dict) -> list[dict]:
    """The file list of the snapshot directory ``path`` once every file's size,
    CRC-32 and structure match its checksums file; SnapshotError otherwise."""
    try:
        with open(os.path.join(path, CHECKSUMS)) as fh:
            sums = json.load(fh)
        files = sums["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: checksums unreadable ({exc})") from None
    for key, want in meta.items():
        if sums.get(key) != want:
            raise SnapshotError(f"{path}: written with {key}={sums.get(key)!r}, this engine has {want!r}")
    for f in files:
        fpath = os.path.join(path, os.path.basename(str(f.get("file", ""))))
        try:
            size = os.path.getsize(fpath)
        except OSError as exc:
            raise SnapshotError(f"{fpath}: {exc.strerror}") from None
        if size != f.get("bytes"):
            raise SnapshotError(f"{fpath}: {size} bytes, checksums say {f.get('bytes')}")
        _, crc, _ = _crc_file(fpath, f.get("vectors"))
        if crc != f.get("crc32"):
            raise SnapshotError(f"{fpath}: CRC-32 mismatch")
    led = sums.get("ledger")
    if led is not None:
        lpath = os.path.join(path, ledgerfile.FILE)
        try:
            got = _plain_crc(lpath)
        except OSError as exc:
            raise SnapshotError(f"{lpath}: {exc.strerror}") from None
        if got != (led.get("bytes"), led.get("crc32")):
            raise SnapshotError(f"{lpath}: size or CRC-32 mismatch")
    return files


def load_ledger(path: str) -> "ledgerfile.Ledger | None":
    """The ledger of a verified snapshot directory; None for a snapshot written
    before ledgers existed. SnapshotError when it does not parse."""
    lpath = os.path.join(path, ledgerfile.FILE)
    if not os.path.exists(lpath):
        return None
    try:
        return ledgerfile.read(lpath)
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{lpath}: {exc}") from None


def load(path: str, meta: dict) -> list[tuple[str, hnswlib.Index]]:
    """Verify and load every shard of one snapshot; SnapshotError if any is bad."""
    out = []
    for f in verify(path, meta):
        index = hnswlib.Index(space=meta["metric"], dim=meta["dim"])
        try:
            index.load_index(os.path.join(path, f["file"]))
        except (RuntimeError, MemoryError) as exc:
            raise SnapshotError(f"{path}/{f['file']}: hnswlib could not load it ({exc})") from None
        if index.get_current_count() != f["vectors"]:
            raise SnapshotError(f"{path}/{f['file']}: loaded {index.get_current_count()} vectors, "
                                f"expected {f['vectors']}")
        out.append((f["space"], index))
    return out
