"""Which partitions a host should own: an even spread over the live hosts.

Pure functions of the cluster's state as one host sees it, so every host
computes the same targets without talking to the others, and tests need no
processes. Hosts sorted by id; host ``i`` of ``H`` non-draining live hosts
gets ``P // H`` partitions, plus one if ``i < P % H``. A draining host gets 0.

A host under its target takes free partitions (unowned, expired, released),
lowest first. A host over its target releases its highest partitions, but
only while some other host is under its target (otherwise nobody would
take them and they would sit unowned for nothing). Releasing is a graceful
handoff (``engine.cluster.follower``): stop applying, upload a snapshot,
release; the taker continues from it.
"""

from __future__ import annotations


def targets(hosts: list[str], draining: set[str], partitions: int) -> dict[str, int]:
    active = sorted(h for h in hosts if h not in draining)
    out = {h: 0 for h in hosts}
    if not active:
        return out
    base, extra = divmod(partitions, len(active))
    for i, h in enumerate(active):
        out[h] = base + (1 if i < extra else 0)
    return out


def plan(me: str, owners: dict[int, str | None], hosts: list[str], draining: set[str],
         partitions: int, cooling: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """(partitions to take, partitions to give away) for host ``me``.

    ``owners``: partition → live owner or None; ``cooling``: partitions this
    host released a moment ago and must not take straight back."""
    want = targets(hosts, draining, partitions)
    counts = {h: 0 for h in hosts}
    for o in owners.values():
        if o in counts:
            counts[o] += 1
    mine = sorted(p for p, o in owners.items() if o == me)
    target = want.get(me, 0)
    if len(mine) < target:
        free = [p for p in range(partitions) if owners.get(p) is None and p not in cooling]
        return free[:target - len(mine)], []
    if len(mine) > target:
        hungry = sum(max(0, want[h] - counts[h]) for h in hosts if h != me)
        give = min(len(mine) - target, hungry)
        return [], mine[len(mine) - give:] if give else []
    return [], []
