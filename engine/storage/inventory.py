"""What a data directory holds, read before an instance starts (never written here).

``spaces_on_disk`` names every memory space that recovery would register:
those with a shard file in a slot's snapshots, and those named by a record
of the write-ahead log generations. ``check_room_for_spaces`` refuses a
start whose ``--max-spaces`` is below that number: otherwise every worker
would fail to register a recovered space and crash at each start (a crash
loop that parks every slot). The CLI hands this check to the supervisor's
start-up (``Supervisor(checks=...)``), so the supervisor package does not
read the storage format itself.
"""

from __future__ import annotations

import os

from engine.config import Params, valid_space
from engine.errors import ConfigError, SnapshotError
from engine.storage import snapshots
from engine.storage.walgen import generations
from engine.storage.walscan import replay

SUFFIX = ".hnsw"


def spaces_on_disk(data_dir: str, slots: int) -> set[str]:
    names: set[str] = set()
    for slot in range(slots):
        sdir = snapshots.slot_dir(data_dir, slot)
        try:
            entries = snapshots.read_manifest(sdir)
        except SnapshotError:
            entries = []  # recovery reports it; the log still names the spaces
        for entry in entries:
            try:
                files = os.listdir(os.path.join(sdir, entry.dir))
            except OSError:
                continue
            names.update(f[:-len(SUFFIX)] for f in files if f.endswith(SUFFIX))
        for _, path in generations(data_dir, slot):
            # Read-only: a damaged tail is left for the worker's recovery to cut and count.
            replay(path, lambda space, ids, vectors: names.add(space), cut_tail=False)
    return {n for n in names if valid_space(n)}  # recovery skips the others (and says so)


def check_room_for_spaces(params: Params) -> None:
    found = spaces_on_disk(params.data_dir, params.slots)
    if len(found) > params.max_spaces:
        raise ConfigError(f"--max-spaces={params.max_spaces} is below the {len(found)} memory spaces the data "
                          f"directory {params.data_dir} holds; start with --max-spaces {len(found)} or more "
                          f"(or another --data-dir)")
