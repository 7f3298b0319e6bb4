"""What a snapshot keeps of the identity table (``engine.ledger``): ``ledger.npz``.

Written next to the shard files of a snapshot (``engine.storage.snapshots``),
in the snapshot child, from the table in shared memory (read only) and the
shards' deleted marks as they were at the fork; its size and CRC-32 are in
the snapshot's ``checksums.json`` under ``ledger``. A numpy ``.npz``::

    names       u1[*]    JSON list of space names (index = position)
    space       u4[r]    row's space, index into names
    ids         u8[r]
    stamps      u8[r]    stamp of the newest operation applied to the key
    forgotten   u1[r]    1: a tombstone this slot wrote; 0: a key this slot holds
    dead_space  u4[d]    labels marked deleted in the shards, per space
    dead_ids    u8[d]

The rows are the table's at the time the child reads it, a little after the
fork: a row may be newer than the shard files (its operation is in the log
after the snapshot, and replays on top) or missing (the key moved to another
slot, which holds it). Recovery applies them with the table's rule, newest
stamp wins, so either is harmless.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

FILE = "ledger.npz"


def collect(table, slot: int, name_of, dead: dict) -> dict[str, np.ndarray]:
    """The arrays of one slot's ledger file."""
    space, ids, stamps, holder = table.rows_of(slot)
    present = np.unique(space)
    names = sorted({name_of(int(s)) for s in present} | {name_of(s) for s, d in dead.items() if d})
    index = {name: i for i, name in enumerate(names)}
    remap = np.zeros(int(present.max()) + 1 if len(present) else 1, np.uint32)
    for s in present:
        remap[int(s)] = index[name_of(int(s))]
    dead_space = np.concatenate([np.full(len(d), index[name_of(s)], np.uint32) for s, d in dead.items() if d]
                                or [np.zeros(0, np.uint32)])
    dead_ids = np.concatenate([np.fromiter(d, np.uint64, len(d)) for s, d in dead.items() if d]
                              or [np.zeros(0, np.uint64)])
    return {
        "names": np.frombuffer(json.dumps(names).encode(), np.uint8),
        "space": remap[space.astype(np.int64)],
        "ids": ids, "stamps": stamps, "forgotten": (holder < 0).astype(np.uint8),
        "dead_space": dead_space, "dead_ids": dead_ids,
    }


def write(directory: str, arrays: dict[str, np.ndarray]) -> str:
    path = os.path.join(directory, FILE)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    return path


class Ledger:
    """A loaded ledger file, by space name."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.names = json.loads(bytes(arrays["names"]))
        self.arrays = arrays
        n, d = len(arrays["ids"]), len(arrays["dead_ids"])
        if any(len(arrays[k]) != n for k in ("space", "stamps", "forgotten")) or len(arrays["dead_space"]) != d:
            raise ValueError("ledger arrays of different lengths")
        if (n and int(arrays["space"].max()) >= len(self.names)) or \
                (d and int(arrays["dead_space"].max()) >= len(self.names)):
            raise ValueError("ledger row names a space index out of range")

    def rows(self):
        """(space name, ids, stamps, forgotten mask) per space."""
        a = self.arrays
        for i in np.unique(a["space"]):
            sel = a["space"] == i
            yield self.names[int(i)], a["ids"][sel], a["stamps"][sel], a["forgotten"][sel].astype(bool)

    def dead(self, name: str) -> np.ndarray:
        a = self.arrays
        if name not in self.names:
            return np.zeros(0, np.uint64)
        return a["dead_ids"][a["dead_space"] == self.names.index(name)]


def read(path: str) -> Ledger:
    """Raises ValueError (or OSError) when the file is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("names", "space", "ids", "stamps", "forgotten", "dead_space", "dead_ids")}
    except (KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return Ledger(arrays)
