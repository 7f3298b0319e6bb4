"""Start-up of a cluster host: the cluster's NATS objects, and refusal of bad config.

Run by ``engram-stream run --cluster`` before the supervisor forks anything
(``prepare``), and again (idempotently, ``ensure``) by the follower. A
refusal raises ``ConfigError`` naming the flag, so the CLI exits 2:

* no NATS server answers (``--nats``), or JetStream is off on it;
* ``--partitions``, ``--dim`` or ``--metric`` differ from what the cluster
  stored at creation (the first host creates ``meta`` with ``kv.create``,
  which fails if another host created it first: creation is a CAS too);
* ``--host-id`` belongs to a host that heartbeated within ``--lease-ttl``;
* ``--log-replicas`` larger than the JetStream cluster can place.

The cluster's objects (all created with ``--log-replicas`` replicas, file storage):

* stream ``ENGRAM_<c>``, subjects ``engram.<c>.obs.<p>``, limits retention
  with no limit of age, count or size: a message leaves the stream only when
  the partition's owner purged it after uploading a snapshot that covers it
  (``engine.cluster.snapshots``). ``duplicate_window`` (2 min) bounds how
  late a retried publish is still recognised by its ``Nats-Msg-Id``.
* KV bucket ``engram-<c>`` (history 1): ``meta``, ``hosts.<id>``,
  ``leases.<p>``.
* object store ``engram-<c>-snap``: ``partition-<p>``, the newest snapshot.

Local state: in cluster mode a host's local indexes are a cache of the
partitions it owns; the stream and the snapshots are the durable copy. A
host therefore starts from an empty local directory (``<data-dir>/local``,
wiped under its instance lock) and rebuilds what it comes to own from the
newest snapshot and the stream, which is what makes "exactly once per
stream sequence" hold across restarts without a second durable record of
applied positions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time

from engine.cluster import names
from engine.cluster.connection import connect
from engine.errors import ConfigError

log = logging.getLogger("engram.cluster")

DUPLICATE_WINDOW_S = 120.0
REQUEST_TIMEOUT_S = 5.0


def meta_of(p) -> dict:
    return {"partitions": p.partitions, "dim": p.dim, "metric": p.metric, "log_replicas": p.log_replicas}


SETTLE_S = 20.0  # how long a freshly created replicated asset may take to elect its leader


async def retrying(make, seconds: float = SETTLE_S):
    """``await make()``, retried while JetStream answers "no responders" or
    "no response from stream": a replicated stream or bucket created a
    moment ago (by this host or a host starting beside it) has no leader yet."""
    import nats.errors
    from nats.js.errors import NoStreamResponseError
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await make()
        except (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError,
                asyncio.TimeoutError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


async def ensure(js, p) -> dict:
    """Create (or find) the stream, bucket and object store; returns the cluster's meta."""
    import nats.errors
    from nats.js.errors import NoStreamResponseError
    try:
        return await retrying(lambda: _ensure(js, p))
    except (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError,
            asyncio.TimeoutError):
        raise ConfigError(f"--nats={','.join(p.nats)}: JetStream did not answer within {SETTLE_S:.0f}s "
                          f"(is a quorum of the NATS servers up, with JetStream enabled?)") from None


async def _ensure(js, p) -> dict:
    from nats.js import api
    from nats.js.errors import BadRequestError, ServiceUnavailableError, APIError
    c = p.cluster
    try:
        await _find_or_create(
            lambda: js.stream_info(names.stream(c)),
            lambda: js.add_stream(api.StreamConfig(
                name=names.stream(c), subjects=[names.subjects(c)], storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.NEW,
                num_replicas=p.log_replicas, duplicate_window=DUPLICATE_WINDOW_S, allow_direct=True)))
        kv = await _find_or_create(
            lambda: js.key_value(names.bucket(c)),
            lambda: js.create_key_value(api.KeyValueConfig(
                bucket=names.bucket(c), history=1, replicas=p.log_replicas, storage=api.StorageType.FILE)))
        await _find_or_create(
            lambda: js.object_store(names.snapshot_bucket(c)),
            lambda: js.create_object_store(names.snapshot_bucket(c), api.ObjectStoreConfig(
                bucket=names.snapshot_bucket(c), replicas=p.log_replicas, storage=api.StorageType.FILE)))
    except ServiceUnavailableError:
        raise ConfigError(f"--nats={','.join(p.nats)}: JetStream is not enabled on the NATS servers "
                          f"(start nats-server with -js)") from None
    except (BadRequestError, APIError) as exc:
        text = str(getattr(exc, "description", "") or exc)
        if "replica" in text or "insufficient" in text or "resources" in text:
            raise ConfigError(f"--log-replicas={p.log_replicas}: JetStream cannot place that many replicas "
                              f"({text})") from None
        raise ConfigError(f"--cluster={c}: JetStream refused to set the cluster up: {text}") from None
    return await _meta(kv, p)


# JetStream's answers when a stream of that name, or one claiming the same
# subjects, came to exist between our lookup and our create.
RACED_CODES = frozenset({10058, 10065})  # stream name in use; subjects overlap


async def _find_or_create(find, create):
    """The asset ``find()`` returns, created with ``create()`` when missing.

    Hosts starting together race to create the same assets, and the server
    checks name and subjects in separate steps: the loser of a race can be
    told "subjects overlap" by the very stream the winner just made. A
    refused create therefore looks the asset up once more before the
    refusal counts; if it is still missing, something else holds the
    subjects and the refusal stands."""
    from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
    try:
        return await find()
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await create()
    except APIError as exc:
        if getattr(exc, "err_code", None) not in RACED_CODES:
            raise
        try:
            return await find()
        except (BucketNotFoundError, NotFoundError):
            raise exc from None


async def _meta(kv, p) -> dict:
    from nats.js.errors import KeyWrongLastSequenceError
    mine = meta_of(p)
    try:
        await kv.create(names.META_KEY, json.dumps(dict(mine, created_ms=int(time.time() * 1000))).encode())
        log.info("cluster %r created: %s", p.cluster, mine)
        return mine
    except KeyWrongLastSequenceError:
        pass
    stored = json.loads((await kv.get(names.META_KEY)).value)
    for key, flag in (("partitions", "--partitions"), ("dim", "--dim"), ("metric", "--metric")):
        if stored.get(key) != mine[key]:
            raise ConfigError(f"{flag}={mine[key]} differs from cluster {p.cluster!r}, created with "
                              f"{flag}={stored.get(key)}; every host must use the cluster's value")
    return stored


async def check_host_free(kv, p, now_ms: int | None = None) -> None:
    """Refuse ``--host-id`` while a host of that id heartbeats."""
    from nats.js.errors import KeyNotFoundError
    try:
        entry = await kv.get(names.host_key(p.host_id))
    except KeyNotFoundError:
        return
    if not entry.value:
        return
    rec = json.loads(entry.value)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age = (now_ms - int(rec.get("heartbeat_ms", 0))) / 1000
    if age < p.lease_ttl and not rec.get("left"):
        raise ConfigError(f"--host-id={p.host_id} is live in cluster {p.cluster!r} (at {rec.get('address')}, "
                          f"heartbeat {max(age, 0):.1f}s ago): choose another id, or start again after "
                          f"--lease-ttl={p.lease_ttl:g}s")


async def _check(p) -> dict:
    nc = await connect(p, f"engram-{p.host_id}-preflight", first_attempt_only=True)
    try:
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        meta = await ensure(js, p)
        await check_host_free(await js.key_value(names.bucket(p.cluster)), p)
        return meta
    finally:
        await nc.close()


def prepare(cfg, check_name_free):
    """Checks against the cluster, then a fresh local directory; returns the
    ``Config`` the supervisor runs with (its ``data_dir`` is ``<data-dir>/local``).
    ``check_name_free(name, data_dir)``: the supervisor's check (handed in by
    the CLI: cluster code names no supervisor module)."""
    asyncio.run(_check(cfg))
    from engine.config.resolve import Config
    from engine.errors import InstanceRunning
    from shm.lock import InstanceLock
    from shm.segment import remove_instance_objects
    local = os.path.join(cfg.data_dir, "local")
    os.makedirs(local, mode=0o700, exist_ok=True)
    lock = InstanceLock(os.path.join(local, "LOCK"))
    if not lock.try_acquire():
        raise InstanceRunning(f"data directory {os.path.abspath(local)} is in use (pid {lock.holder_pid()})")
    try:
        if check_name_free(cfg.name, local):
            # Queued records of a dead run were applied from the stream: the
            # new owner of their partitions replays them; carrying them over
            # would apply them twice.
            remove_instance_objects(cfg.name)
        for entry in os.listdir(local):
            if entry != "LOCK":
                path = os.path.join(local, entry)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    finally:
        lock.release()
    return Config(dict(cfg.values, data_dir=local), getattr(cfg, "explicit", frozenset()))
