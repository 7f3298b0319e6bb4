"""Partition leases in the cluster's KV bucket: compare-and-set on revisions, epochs.

One key per partition, ``leases.<p>``, holding JSON
``{"owner", "epoch", "expires_ms", "released"}``. Every write is a
compare-and-set on the key's revision (``kv.create`` for a partition never
owned, ``kv.update(key, value, last=revision)`` otherwise), so of two hosts
racing for a partition exactly one wins and the other gets
``KeyWrongLastSequenceError``.

* Epoch: incremented at every change of owner (never on renewal). Whatever a
  host applies or serves for a partition is checked against the epoch it
  started with (``engine.control.partitions``), so a host that lost the
  lease stops at once even if it has not noticed the new owner.
* Expiry without trusting clocks across hosts: a lease is expired for an
  observer when its revision has not changed for ``ttl`` by the observer's
  own monotonic clock (``expires_ms`` is informational, for ``cluster
  status``). The owner renews every ``ttl/3`` and considers itself the owner
  only until ``sent + ttl * SAFE_FRACTION`` of its last successful renewal,
  measured from before the request was sent; an observer starts its count
  after it read that revision, hence later. Only clock *rate* drift between
  hosts matters, not skew.
* Release (graceful handoff): the owner writes ``released: true`` (CAS);
  any host may then take it at once with epoch + 1.

``Leases`` is driven by the follower's loop; KV access is through the small
``kv`` interface of nats-py (``get``, ``create``, ``update``), and the clocks
are injected, so tests drive it with a fake bucket and fake time. Outcomes
of lease writes are counted through ``inc(name, **labels)`` (the catalog's
``cluster_lease_*`` counters; the follower passes its metric row's).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from engine.cluster import names

SAFE_FRACTION = 0.8


@dataclass(frozen=True)
class Record:
    owner: str
    epoch: int
    expires_ms: int = 0
    released: bool = False

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "epoch": self.epoch, "expires_ms": self.expires_ms,
                           "released": self.released}).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> "Record | None":
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(str(d["owner"]), int(d["epoch"]), int(d.get("expires_ms", 0)), bool(d.get("released")))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged record counts as free; the next CAS replaces it


@dataclass
class Seen:
    revision: int
    record: Record | None
    since: float  # our monotonic time when we first saw this revision


@dataclass
class Held:
    epoch: int
    revision: int
    sent: float  # monotonic time the last successful write was sent


def _no_metrics(name: str, **labels) -> None:
    return None


class Leases:
    def __init__(self, kv, host_id: str, ttl: float, partitions: int, clock=time.monotonic, wall=time.time,
                 inc=None):
        self.kv = kv
        self.inc = inc or _no_metrics
        self.host = host_id
        self.ttl = ttl
        self.partitions = partitions
        self.clock = clock
        self.wall = wall
        self.seen: dict[int, Seen] = {}
        self.held: dict[int, Held] = {}
        self.conflicts = 0        # CAS lost to another host
        self.renew_failures = 0   # renewals that failed for any reason

    # -- reading -------------------------------------------------------------
    async def refresh(self) -> None:
        """Read every lease; remember when each revision was first seen."""
        from nats.js.errors import KeyNotFoundError, KeyDeletedError
        now = self.clock()
        for p in range(self.partitions):
            try:
                entry = await self.kv.get(names.lease_key(p))
                rev, rec = int(entry.revision), Record.decode(entry.value)
            except (KeyNotFoundError, KeyDeletedError):
                rev, rec = 0, None
            self.observe(p, rev, rec, now)

    def observe(self, p: int, revision: int, record: Record | None, now: float) -> None:
        old = self.seen.get(p)
        if old is None or old.revision != revision:
            self.seen[p] = Seen(revision, record, now)

    def owner(self, p: int) -> str | None:
        """The live owner as far as this host can tell; None when free."""
        s = self.seen.get(p)
        if s is None or s.record is None or s.record.released:
            return None
        if s.record.owner == self.host:
            return self.host if p in self.held else None
        if self.clock() - s.since > self.ttl:
            return None  # unchanged for a whole ttl: expired
        return s.record.owner

    def epoch(self, p: int) -> int:
        s = self.seen.get(p)
        return s.record.epoch if s is not None and s.record is not None else 0

    def valid(self, p: int) -> bool:
        h = self.held.get(p)
        return h is not None and self.clock() < self.valid_until(p)

    def valid_until(self, p: int) -> float:
        h = self.held.get(p)
        return 0.0 if h is None else h.sent + self.ttl * SAFE_FRACTION

    # -- writing -------------------------------------------------------------
    def _record(self, epoch: int, released: bool = False) -> Record:
        return Record(self.host, epoch, int((self.wall() + self.ttl) * 1000), released)

    async def acquire(self, p: int) -> int | None:
        """Take a free partition; returns the new epoch, or None if another host won."""
        from nats.js.errors import KeyWrongLastSequenceError
        if self.owner(p) is not None:
            return None
        s = self.seen.get(p)
        epoch = self.epoch(p) + 1
        rec = self._record(epoch)
        sent = self.clock()
        try:
            if s is None or s.revision == 0:
                rev = await self.kv.create(names.lease_key(p), rec.encode())
            else:
                rev = await self.kv.update(names.lease_key(p), rec.encode(), last=s.revision)
        except KeyWrongLastSequenceError:
            self._conflict("cluster_lease_acquisitions_total")
            return None
        except Exception:
            self.inc("cluster_lease_acquisitions_total", result="error")
            raise
        self.inc("cluster_lease_acquisitions_total", result="ok")
        self.held[p] = Held(epoch, int(rev), sent)
        self.observe(p, int(rev), rec, sent)
        return epoch

    async def renew(self, p: int) -> bool:
        """Extend a held lease; False (and no longer held) when it was lost."""
        from nats.js.errors import KeyWrongLastSequenceError
        h = self.held.get(p)
        if h is None:
            return False
        rec = self._record(h.epoch)
        sent = self.clock()
        try:
            rev = await self.kv.update(names.lease_key(p), rec.encode(), last=h.revision)
        except KeyWrongLastSequenceError:
            self._conflict("cluster_lease_renewals_total")
            self.renew_failures += 1
            self.held.pop(p, None)
            return False
        except Exception:
            self.renew_failures += 1  # NATS unreachable: keep trying until the lease runs out
            self.inc("cluster_lease_renewals_total", result="error")
            return self.valid(p)
        self.inc("cluster_lease_renewals_total", result="ok")
        h.revision, h.sent = int(rev), sent
        self.observe(p, int(rev), rec, sent)
        return True

    async def release(self, p: int) -> None:
        """Hand the partition over: mark it released (the next owner takes epoch + 1)."""
        from nats.js.errors import KeyWrongLastSequenceError
        h = self.held.pop(p, None)
        if h is None:
            return
        rec = self._record(h.epoch, released=True)
        try:
            rev = await self.kv.update(names.lease_key(p), rec.encode(), last=h.revision)
            self.observe(p, int(rev), rec, self.clock())
        except KeyWrongLastSequenceError:
            self._conflict(None)

    def _conflict(self, counter: str | None) -> None:
        self.conflicts += 1
        self.inc("cluster_lease_conflicts_total")
        if counter is not None:
            self.inc(counter, result="conflict")

    def lose(self, p: int) -> None:
        """Forget a lease that ran out (not renewed in time)."""
        self.held.pop(p, None)
