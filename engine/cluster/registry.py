"""Hosts of the cluster in the KV bucket: ``hosts.<id>`` (heartbeat) and ``drain.<id>``.

A host's record (written by that host's follower only, every ``ttl/3``)::

    {"id", "address" (its --advertise), "capacity" (worker slots),
     "heartbeat_ms", "started_ms", "draining",
     "positions": {p: applied stream sequence}, "snapshots": {p: [seq, ms]}}

A host is live while its heartbeat is younger than the lease ttl (wall
clock; only ``cluster status`` and the assignment use it, never fencing,
which is by lease revisions). ``drain.<id>`` is written by
``engram-stream cluster drain``; a host that sees its own drain key wants no
partitions and hands each over.
"""

from __future__ import annotations

import json
import time

from engine.cluster import names


async def keys(kv, prefix: str) -> list[str]:
    from nats.js.errors import NoKeysError
    try:
        return [k for k in await kv.keys() if k.startswith(prefix)]
    except NoKeysError:
        return []


async def hosts(kv) -> dict[str, dict]:
    """Every host record, live or not."""
    from nats.js.errors import KeyNotFoundError, KeyDeletedError
    out = {}
    for key in await keys(kv, "hosts."):
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            continue
        try:
            out[key.split(".", 1)[1]] = json.loads(entry.value)
        except (ValueError, TypeError):
            continue
    return out


def live(records: dict[str, dict], ttl: float, now_ms: int | None = None) -> list[str]:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return sorted(h for h, r in records.items()
                  if not r.get("left") and now_ms - int(r.get("heartbeat_ms", 0)) < ttl * 1000)


async def draining(kv) -> set[str]:
    return {k.split(".", 1)[1] for k in await keys(kv, "drain.")}


async def heartbeat(kv, record: dict) -> None:
    record = dict(record, heartbeat_ms=int(time.time() * 1000))
    await kv.put(names.host_key(record["id"]), json.dumps(record).encode())


async def request_drain(kv, host_id: str) -> None:
    await kv.put(f"drain.{host_id}", b"1")


async def clear_drain(kv, host_id: str) -> None:
    from nats.js.errors import KeyNotFoundError
    try:
        await kv.delete(f"drain.{host_id}")
    except KeyNotFoundError:
        pass
