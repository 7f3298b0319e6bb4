"""Where an observation goes: the home worker of its space, then spill-over.

The home slot is a stable hash of the space name (blake2b, not Python's
salted ``hash``), so every producer process agrees and a space's vectors
stay together in few shards, which keeps recall fan-out low (DESIGN §4).
When the home ring of a lane is full, the rest goes to the other rings of the
same lane with the most free room; stealing rebalances the other way.
"""

from __future__ import annotations

import hashlib


def stable_hash(space: str) -> int:
    """64-bit blake2b of the name: the same in every process, host and run
    (also the partition of a space in cluster mode, ``engine.cluster.names``)."""
    return int.from_bytes(hashlib.blake2b(space.encode(), digest_size=8).digest(), "little")


def home_slot(space: str, slots: int) -> int:
    return stable_hash(space) % slots


def spill_order(home: int, free: list[int]) -> list[int]:
    """Slots to try in order: home first, then others by free room, most first."""
    others = sorted((s for s in range(len(free)) if s != home), key=lambda s: (-free[s], s))
    return [home] + [s for s in others if free[s] > 0]
