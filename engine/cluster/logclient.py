"""The front's NATS side: an asyncio loop on its own thread, called from gRPC handler threads.

gRPC's synchronous server runs handlers on a thread pool; nats-py is
asyncio. ``LogClient`` owns one event loop thread with one connection and
offers blocking calls (``publish``, ``last_seq``, ``view``, ``receipt``), each a
coroutine run on that loop with a timeout. Started in the gateway child
after the fork, like gRPC's own threads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from engine.cluster import names, registry
from engine.cluster.connection import connect
from engine.cluster.leases import Record

CALL_TIMEOUT_S = 5.0
VIEW_TTL_S = 0.5   # how long an owners/hosts view is reused
RECEIPT_ATTEMPT_S = 1.0  # one ask of the owner (engine.cluster.receipts); asked again until the deadline
RECEIPT_PAUSE_S = 0.05   # between asks when nobody answered (no owner now, or it moved)


class LogClient:
    def __init__(self, params):
        self.p = params
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="engram-nats", daemon=True)
        self.thread.start()
        self.nc = self.call(connect(params, f"engram-{params.host_id}-front"), 30)
        self.js = self.nc.jetstream(timeout=CALL_TIMEOUT_S)
        self.kv = self.call(self.js.key_value(names.bucket(params.cluster)))
        self._view: tuple[float, dict, dict] = (0.0, {}, {})
        self._lock = threading.Lock()

    def call(self, coro, timeout: float = CALL_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (a read of nats-py's state; no call on the loop)."""
        return bool(self.nc.is_connected)

    def publish(self, partition: int, body: bytes, msg_id: str):
        """PubAck of the batch (raises on timeout or when no quorum stored it)."""
        return self.call(self.js.publish(names.subject(self.p.cluster, partition), body,
                                         headers={"Nats-Msg-Id": msg_id}))

    def last_seq(self, partition: int) -> int:
        """The partition's last stream sequence now (0: nothing published yet)."""
        from nats.js.errors import NotFoundError

        async def last():
            try:
                msg = await self.js.get_last_msg(names.stream(self.p.cluster),
                                                 names.subject(self.p.cluster, partition))
                return int(msg.seq)
            except NotFoundError:
                return 0
        return self.call(last())

    def receipt(self, partition: int, seq: int, timeout: float) -> dict | None:
        """The owner's reply once it applied message ``seq`` of ``partition``
        (``{"state": "applied", "not_found": n | None}``), or None when no
        owner said so within ``timeout`` (``engine.cluster.receipts``)."""
        return self.call(self._receipt(partition, seq, time.monotonic() + timeout), timeout + CALL_TIMEOUT_S)

    async def _receipt(self, partition: int, seq: int, deadline: float) -> dict | None:
        import nats.errors
        subject = names.receipt_subject(self.p.cluster, partition)
        while True:
            left = deadline - time.monotonic()
            if left <= RECEIPT_PAUSE_S:
                return None
            attempt = min(left, RECEIPT_ATTEMPT_S)
            ask = dumps({"seq": seq, "wait_s": max(0.0, attempt - 0.2)}).encode()  # answered before we give up
            try:
                reply = json.loads((await self.nc.request(subject, ask, timeout=attempt)).data)
                if reply.get("state") == "applied":
                    return reply
                if reply.get("state") == "pending":
                    continue
            except (nats.errors.Error, asyncio.TimeoutError, ValueError):
                pass  # no host holds the partition now, or the connection is being re-established
            await asyncio.sleep(RECEIPT_PAUSE_S)

    def view(self) -> tuple[dict, dict]:
        """(partition → lease record, host id → host record), at most VIEW_TTL_S old."""
        with self._lock:
            at, leases, hosts = self._view
            if time.monotonic() - at < VIEW_TTL_S:
                return leases, hosts
        leases, hosts = self.call(self._read())
        with self._lock:
            self._view = (time.monotonic(), leases, hosts)
        return leases, hosts

    async def _read(self):
        from nats.js.errors import KeyNotFoundError, KeyDeletedError
        leases = {}
        for p in range(self.p.partitions):
            try:
                leases[p] = Record.decode((await self.kv.get(names.lease_key(p))).value)
            except (KeyNotFoundError, KeyDeletedError):
                leases[p] = None
        return leases, await registry.hosts(self.kv, self.js, names.bucket(self.p.cluster))

    def close(self) -> None:
        try:
            self.call(self.nc.close(), 5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)


def owner_address(leases: dict, hosts: dict, partition: int, ttl: float) -> tuple[str | None, str]:
    """(gRPC address of the partition's owner, or None with the reason)."""
    rec = leases.get(partition)
    if rec is None or rec.released:
        return None, f"partition {partition} has no owner now (being assigned)"
    host = hosts.get(rec.owner)
    live = host is not None and host.get("heartbeat_ms", 0) > (time.time() - ttl) * 1000
    if not live:
        return None, f"partition {partition}: owner {rec.owner} is not live (failover in progress)"
    return host.get("address"), ""


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))
