"""Observations still queued when a graceful stop ends, kept on disk for the next start.

A drain that runs out of ``--graceful-timeout`` must not lose what was
acknowledged (stopping politely must be no worse than a ``kill -9``, whose
rings the next start carries over from shared memory, ``salvage``). After
its workers exited, the supervisor copies every uncommitted record out of
the rings (``salvage.collect_from``) into ``<data-dir>/spill/spill.npz``,
and only then removes the shared memory. The next start queues them again
(claimed records stay claimed by their slot, as with a carry-over) and
deletes the file before any worker runs.

File (numpy ``.npz``, a zip whose members carry CRC-32s that ``load``
verifies; written to a temp name, fsynced, renamed, directory fsynced)::

    slot        i8[n]      ring slot the record was queued on
    lane        i8[n]      0 high, 1 normal, 2 low
    claimed_by  i8[n]      slot whose worker had claimed it, -1 when waiting
    space       i8[n]      index into ``names``
    ids         u8[n]
    vectors     f4[n, dim]
    stamps      u8[n]      each operation's stamp (engine.ledger); absent in
                           older files: all 0
    kinds       u1[n]      0 observe, 1 forget; absent in older files: all 0
    names       u1[*]      JSON list of space names

Exactly once: should a start crash after queueing the spilled records and
before deleting the file, the records are in that run's shared memory and
in the file. The next start carries the shared memory over and drops from
the file every (space, id) the carry-over already holds (``dedupe``).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from engine.errors import SpillError
from engine.fsutil import atomic_write, fsync_dir
from engine.supervisor.salvage import Leftover

FILE = "spill.npz"


def path(data_dir: str) -> str:
    return os.path.join(data_dir, "spill", FILE)


def save(data_dir: str, leftovers: list[Leftover]) -> int:
    """Write ``leftovers`` durably; returns how many records. Raises OSError."""
    n = sum(len(x.ids) for x in leftovers)
    if not n:
        return 0
    names = sorted({x.space for x in leftovers})
    index = {name: i for i, name in enumerate(names)}
    arrays = {
        "slot": np.concatenate([np.full(len(x.ids), x.slot, np.int64) for x in leftovers]),
        "lane": np.concatenate([np.full(len(x.ids), x.lane, np.int64) for x in leftovers]),
        "claimed_by": np.concatenate([np.full(len(x.ids), -1 if x.claimed_by is None else x.claimed_by,
                                              np.int64) for x in leftovers]),
        "space": np.concatenate([np.full(len(x.ids), index[x.space], np.int64) for x in leftovers]),
        "ids": np.concatenate([np.asarray(x.ids, np.uint64) for x in leftovers]),
        "vectors": np.concatenate([np.asarray(x.vectors, np.float32) for x in leftovers]),
        "stamps": np.concatenate([np.asarray(x.stamps, np.uint64) for x in leftovers]),
        "kinds": np.concatenate([np.asarray(x.kinds, np.uint8) for x in leftovers]),
        "names": np.frombuffer(json.dumps(names).encode(), np.uint8),
    }
    final = path(data_dir)
    os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
    atomic_write(final, lambda fh: np.savez(fh, **arrays))
    return n


def load(data_dir: str, slots: int, dim: int) -> list[Leftover]:
    """The spilled records (empty when there is no file). Raises SpillError
    naming the file when it is damaged or of another shape."""
    where = path(data_dir)
    if not os.path.exists(where):
        return []
    try:
        with np.load(where, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("slot", "lane", "claimed_by", "space", "ids", "vectors", "names")}
            n = len(arrays["ids"])
            arrays["stamps"] = z["stamps"] if "stamps" in z.files else np.zeros(n, np.uint64)
            arrays["kinds"] = z["kinds"] if "kinds" in z.files else np.zeros(n, np.uint8)
        names = json.loads(bytes(arrays["names"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise SpillError(f"{where}: unreadable ({exc}); move it aside to start without its records") from None
    n = len(arrays["ids"])
    if arrays["vectors"].shape != (n, dim) or any(len(arrays[k]) != n for k in ("slot", "lane", "space", "stamps",
                                                                               "kinds")):
        raise SpillError(f"{where}: holds {arrays['vectors'].shape} vectors, this engine has dim {dim}; "
                         f"start with the --dim it was written with")
    out: list[Leftover] = []
    keys = np.stack([arrays["slot"], arrays["lane"], arrays["claimed_by"], arrays["space"]], axis=1)
    for key in np.unique(keys, axis=0):
        slot, lane, claimed, space = (int(v) for v in key)
        if not 0 <= space < len(names):
            raise SpillError(f"{where}: record names space index {space} of {len(names)}")
        if not (0 <= slot < slots and 0 <= lane < 3 and -1 <= claimed < slots):
            raise SpillError(f"{where}: record of slot {slot} lane {lane}; this engine has {slots} worker "
                             f"slot(s): start with the --workers it was written with")
        sel = (keys == key).all(axis=1)
        out.append(Leftover(slot, lane, None if claimed < 0 else claimed, str(names[space]),
                            arrays["ids"][sel], arrays["vectors"][sel], arrays["stamps"][sel].astype(np.uint64),
                            arrays["kinds"][sel].astype(np.uint8)))
    return out


def _keys(ids: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """(id, stamp) pairs as one comparable value each."""
    pairs = np.stack([np.asarray(ids, np.uint64), np.asarray(stamps, np.uint64)], axis=1)
    return np.ascontiguousarray(pairs).view(np.dtype((np.void, 16))).ravel()


def dedupe(spilled: list[Leftover], carried: list[Leftover]) -> list[Leftover]:
    """``spilled`` without the (space, id, stamp) operations ``carried`` already holds."""
    held: dict[str, list] = {}
    for x in carried:
        held.setdefault(x.space, []).append(_keys(x.ids, x.stamps))
    out = []
    for x in spilled:
        have = held.get(x.space)
        keep = ~np.isin(_keys(x.ids, x.stamps), np.concatenate(have)) if have else np.ones(len(x.ids), bool)
        if keep.any():
            out.append(Leftover(x.slot, x.lane, x.claimed_by, x.space, x.ids[keep], x.vectors[keep],
                                x.stamps[keep], x.kinds[keep]))
    return out


def discard(data_dir: str) -> None:
    """Delete the file durably (the start has queued its records)."""
    where = path(data_dir)
    try:
        os.unlink(where)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(where))
