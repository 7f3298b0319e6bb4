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


async def keys(kv, prefix: str, js=None, bucket: str = "") -> list[str]:
    """Keys of the bucket under ``prefix``, from one stream-info request.

    Not ``kv.keys()``: that one runs a watcher (a consumer), which after a
    NATS server failure sometimes times out until the consumer is rebuilt,
    while a single API request is answered by the new stream leader."""
    # KV_<bucket> holding subjects $KV.<bucket>.<key> is how JetStream stores a bucket (ADR-8).
    pre = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{pre}{prefix}>")
    return sorted(s[len(pre):] for s in (info.state.subjects or {}))


async def hosts(kv, js, bucket: str) -> dict[str, dict]:
    """Every host record, live or not."""
    from nats.js.errors import KeyNotFoundError, KeyDeletedError
    out = {}
    for key in await keys(kv, "hosts.", js, bucket):
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


async def draining(kv, js, bucket: str) -> set[str]:
    from nats.js.errors import KeyNotFoundError, KeyDeletedError
    out = set()
    for k in await keys(kv, "drain.", js, bucket):
        try:
            if (await kv.get(k)).value:
                out.add(k.split(".", 1)[1])
        except (KeyNotFoundError, KeyDeletedError):
            pass
    return out


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
