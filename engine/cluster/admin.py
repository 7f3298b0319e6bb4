"""``engram-stream cluster status`` and ``cluster drain HOST``.

Reads only what the cluster keeps in NATS (hosts, leases, snapshots, the
stream), so it runs from any machine that reaches the NATS servers; no
engine needs to run where it runs.
"""

from __future__ import annotations

import asyncio
import json
import time

from engine.cluster import names, registry
from engine.cluster.connection import connect
from engine.cluster.leases import Record


async def _status(cfg) -> dict:
    from nats.js.errors import KeyNotFoundError, KeyDeletedError, NotFoundError
    nc = await connect(cfg, "engram-cluster-cli", first_attempt_only=True)
    try:
        js = nc.jetstream(timeout=5)
        bucket = names.bucket(cfg.cluster)
        kv = await js.key_value(bucket)
        meta = json.loads((await kv.get(names.META_KEY)).value)
        hosts = await registry.hosts(kv, js, bucket)
        now_ms = int(time.time() * 1000)
        live = set(registry.live(hosts, cfg.lease_ttl, now_ms))
        parts = []
        for p in range(meta["partitions"]):
            try:
                rec = Record.decode((await kv.get(names.lease_key(p))).value)
            except (KeyNotFoundError, KeyDeletedError):
                rec = None
            try:
                last = int((await js.get_last_msg(names.stream(cfg.cluster), names.subject(cfg.cluster, p))).seq)
            except NotFoundError:
                last = 0
            owner = rec.owner if rec is not None and not rec.released else None
            h = hosts.get(owner or "", {})
            applied = h.get("positions", {}).get(str(p))
            snap = h.get("snapshots", {}).get(str(p)) or [0, 0]
            parts.append({"partition": p, "owner": owner, "owner_live": owner in live,
                          "epoch": rec.epoch if rec else 0, "stream_seq": last, "applied_seq": applied,
                          "lag": None if applied is None else max(0, last - applied),
                          "snapshot_seq": snap[0], "snapshot_age_s": (now_ms - snap[1]) / 1000 if snap[1] else None})
        return {"cluster": cfg.cluster, "meta": meta,
                "hosts": [{"id": h, "address": r.get("address"), "live": h in live, "draining": bool(r.get("draining")),
                           "capacity": r.get("capacity"), "partitions": sum(1 for x in parts if x["owner"] == h),
                           "heartbeat_age_s": (now_ms - r.get("heartbeat_ms", 0)) / 1000}
                          for h, r in sorted(hosts.items()) if not r.get("left")],
                "partitions": parts}
    finally:
        await nc.close()


def status(cfg) -> dict:
    return asyncio.run(_status(cfg))


def render(st: dict) -> str:
    m = st["meta"]
    out = [f"cluster {st['cluster']}: {m['partitions']} partitions, dim {m['dim']} {m['metric']}, "
           f"log replicas {m['log_replicas']}", "", "host          address               live  draining  partitions"]
    for h in st["hosts"]:
        out.append(f"{h['id']:<13} {h['address'] or '-':<21} {'yes' if h['live'] else 'NO':<5} "
                   f"{'yes' if h['draining'] else 'no':<9} {h['partitions']}")
    out += ["", "partition  owner         epoch  stream seq  applied  lag     snapshot seq  snapshot age"]
    for p in st["partitions"]:
        owner = p["owner"] or "UNOWNED"
        if p["owner"] and not p["owner_live"]:
            owner += " (dead)"
        age = "-" if p["snapshot_age_s"] is None else f"{p['snapshot_age_s']:.0f}s"
        out.append(f"{p['partition']:<10} {owner:<13} {p['epoch']:<6} {p['stream_seq']:<11} "
                   f"{'-' if p['applied_seq'] is None else p['applied_seq']:<8} "
                   f"{'-' if p['lag'] is None else p['lag']:<7} {p['snapshot_seq']:<13} {age}")
    return "\n".join(out)


async def _drain(cfg, host: str) -> str:
    nc = await connect(cfg, "engram-cluster-cli", first_attempt_only=True)
    try:
        js = nc.jetstream(timeout=5)
        kv = await js.key_value(names.bucket(cfg.cluster))
        await registry.request_drain(kv, host)
    finally:
        await nc.close()
    return (f"drain of {host} requested: it hands its partitions over to the other live hosts "
            f"(watch `engram-stream cluster status`); it takes partitions again after a restart")


def drain(cfg, host: str) -> str:
    return asyncio.run(_drain(cfg, host))
