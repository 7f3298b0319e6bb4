"""The log follower: a supervisor child that makes this host a member of the cluster.

One asyncio loop (``Follower.run``), every ``TICK`` (a sixth of the lease
ttl) running small idempotent steps:

    beat     (every ttl/3) heartbeat; read leases, hosts and drain requests;
             renew every held lease; read the stream's last sequence of each
             held partition (the apply lag the exporter reports)
    fence    a held partition whose lease is not surely valid any more is
             dropped at once: its applier stops, the front stops serving it
    balance  take free partitions up to this host's share
             (``engine.cluster.assign``); hand over the extra ones
    publish  lease validity into the partition table for the front

Partitions are applied by one task each (``engine.cluster.applier``). A
handoff stops the task, uploads the partition's snapshot
(``engine.cluster.snapshots``) and releases the lease; the taker loads the
snapshot and continues from the stream. The follower also answers
gateways asking whether a unary Forget was applied, for the partitions it
holds (``engine.cluster.receipts``), each request in a task of its own.

Metrics (``metrics.catalog``, ``cluster_*``) go to a producer row the
engine leases on first use (``Engine.record``); the partition gauges (epoch,
owned, apply lag) are read from the partition table by the exporter.

Process rules: forked by the supervisor before any thread exists in it;
the asyncio loop and nats-py's threads start after the fork. SIGTERM ends
the loop (the handler only sets an event), releasing every lease so the
other hosts take over without waiting for a ttl.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

from engine.cluster import applier, assign, names, receipts, registry
from engine.cluster.connection import connect
from engine.cluster.leases import Leases
from engine.control.partitions import FREE, LOADING, PartitionTable

log = logging.getLogger("engram.cluster")

REQUEST_TIMEOUT_S = 2.0
# Longest a snapshot upload or load may take. nats-py bounds each request,
# but an object's chunks arrive on a consumer with no deadline of its own: a
# server lost mid-transfer must fail the step, never hang the loop that
# renews the leases.
TRANSFER_TIMEOUT_S = 60.0


class Follower:
    def __init__(self, inst, engine, clock=time.monotonic):
        self.inst = inst
        self.p = inst.params
        self.engine = engine
        self.clock = clock
        self.table = PartitionTable(inst.partition_rows)
        self.tasks: dict[int, asyncio.Task] = {}
        self.epochs: dict[int, int] = {}
        self.bells = {p: applier.Doorbell() for p in range(self.p.partitions)}
        self.cooling: dict[int, float] = {}
        self.counters: dict = {}
        self.stop = asyncio.Event()
        self.next_beat = 0.0
        self.hosts: list[str] = []
        self.draining: set[str] = set()
        self.started_ms = int(time.time() * 1000)
        self.snapshots = None
        self.receipts = receipts.Receipts()
        self.answering: set[asyncio.Task] = set()
        self.nc = self.js = self.kv = self.leases = None

    @property
    def tick(self) -> float:
        return self.p.lease_ttl / 6

    # -- set-up ----------------------------------------------------------------
    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        self.engine.record(lambda w: w.inc(name, value, **labels))

    def connected(self, up: bool) -> None:
        self.engine.record(lambda w: w.set("cluster_log_connected", 1.0 if up else 0.0, client="follower"))

    async def start(self) -> None:
        from engine.cluster import bootstrap
        from engine.cluster.snapshots import Snapshots
        p = self.p
        self.nc = await connect(p, f"engram-{p.host_id}-follower")
        self.connected(True)
        self.js = self.nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        await bootstrap.ensure(self.js, p)
        self.kv = await self.js.key_value(names.bucket(p.cluster))
        self.leases = Leases(self.kv, p.host_id, p.lease_ttl, p.partitions, clock=self.clock, inc=self.inc)
        self.snapshots = Snapshots(self.js, p, self.table, os.path.join(p.data_dir, "partitions"),
                                   self.engine, record=self.engine.record)
        repaired = self.table.repair(self.inst.rings)
        if repaired:
            log.info("completed %d partition batch(es) a previous follower queued as it died", repaired)
        for q in range(p.partitions):
            if int(self.table.rows[q, 0]):
                self.table.drop(q)  # a dead follower's holdings: re-acquired through the KV, or not
        await registry.clear_drain(self.kv, p.host_id)
        await self.nc.subscribe(names.subjects(p.cluster), cb=self._doorbell)
        await self.nc.subscribe(names.receipt_subjects(p.cluster), cb=self._receipt_asked)

    async def _doorbell(self, msg) -> None:
        try:
            self.bells[int(msg.subject.rsplit(".", 1)[1])].ring()
        except (ValueError, KeyError):
            pass

    async def _receipt_asked(self, msg) -> None:
        # a task per request: one held until its forgets are applied must not delay the next
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self.answering.add(task)
        task.add_done_callback(self.answering.discard)

    async def _answer(self, msg) -> None:
        try:
            q = int(msg.subject.rsplit(".", 1)[1])
            req = json.loads(msg.data)
            if not 0 <= q < self.p.partitions:
                return
            reply = await receipts.answer(self.table, self.inst.rings, self.receipts, q, int(req["seq"]),
                                          float(req["wait_s"]))
            if reply is not None and msg.reply:
                await msg.respond(json.dumps(reply).encode())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("a malformed forget receipt request on %s: %s", msg.subject, exc)
        except Exception as exc:  # the asker retries until its deadline
            log.debug("forget receipt request on %s not answered: %s", msg.subject, exc)

    # -- the loop ----------------------------------------------------------------
    async def run(self) -> None:
        await self.start()
        log.info("host %r joined cluster %r (%d partitions, lease ttl %.1fs)", self.p.host_id,
                 self.p.cluster, self.p.partitions, self.p.lease_ttl)
        try:
            while not self.stop.is_set():
                await self.step()
                try:
                    await asyncio.wait_for(self.stop.wait(), self.tick)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.leave()

    async def step(self) -> None:
        self.connected(self.nc.is_connected)
        now = self.clock()
        if now >= self.next_beat:
            self.next_beat = now + self.p.lease_ttl / 3
            try:
                await asyncio.wait_for(self.beat(), self.p.lease_ttl)
            except Exception as exc:  # NATS unreachable: leases run out, fencing below stops us
                self.counters["log_errors"] = self.counters.get("log_errors", 0) + 1
                log.warning("cluster heartbeat failed: %s", exc)
        self.fence()
        self.reap()
        if self.leases.seen:
            try:
                await self.balance()
            except Exception as exc:
                log.warning("cluster rebalancing failed: %s", exc)
        self.publish()
        await self.snapshot_due()

    async def snapshot_due(self) -> None:
        from engine.control.partitions import SERVING
        for q in list(self.tasks):
            if int(self.table.rows[q, 1]) == SERVING and self.snapshots.due(q):
                try:
                    await asyncio.wait_for(self.snapshots.upload(q), TRANSFER_TIMEOUT_S)
                except Exception as exc:
                    self.snapshots.failures += 1
                    log.warning("partition %d: snapshot upload failed: %s", q, exc)

    async def beat(self) -> None:
        p = self.p
        for q in list(self.leases.held):  # renewals first: they are what keeps the partitions
            if not await self.leases.renew(q):
                log.error("partition %d: lease lost (taken by another host); stopped applying it", q)
                self.counters["lease_lost"] = self.counters.get("lease_lost", 0) + 1
                self._stop_task(q)
                self.table.drop(q)
        await registry.heartbeat(self.kv, self.record())
        await self.leases.refresh()
        await self.stream_heads()
        records = await registry.hosts(self.kv, self.js, names.bucket(p.cluster))
        self.hosts = registry.live(records, p.lease_ttl)
        if p.host_id not in self.hosts:
            self.hosts = sorted(self.hosts + [p.host_id])
        self.draining = await registry.draining(self.kv, self.js, names.bucket(p.cluster))

    async def stream_heads(self) -> None:
        """The stream's last sequence of each held partition, into the table (apply lag)."""
        from nats.js.errors import NotFoundError
        for q in list(self.tasks):
            try:
                msg = await self.js.get_last_msg(names.stream(self.p.cluster), names.subject(self.p.cluster, q))
            except NotFoundError:
                continue  # nothing published (or all purged): no lag to report
            self.table.saw_stream(q, int(msg.seq))

    def record(self) -> dict:
        t = self.table
        return {"id": self.p.host_id, "address": self.p.advertise, "capacity": self.p.slots,
                "started_ms": self.started_ms, "draining": self.p.host_id in self.draining,
                "positions": {q: max(0, names.split_position(t.next_pos(q))[0] - 1) for q in self.tasks},
                "snapshots": {q: [int(t.rows[q, 6]), int(t.rows[q, 7])] for q in self.tasks}}

    def fence(self) -> None:
        for q in list(self.tasks):
            if not self.leases.valid(q):
                log.error("partition %d: lease not renewed in time; stopped applying and serving it", q)
                self.counters["lease_expired"] = self.counters.get("lease_expired", 0) + 1
                self.table.drop(q)
                self._stop_task(q)
                self.leases.lose(q)

    def reap(self) -> None:
        """An applier that ended while its lease is still held (the engine was
        going away, or its epoch check raced a renewal) is started again: a
        renewed lease with nobody applying would stall its partition for good."""
        for q, task in list(self.tasks.items()):
            if not task.done():
                continue
            del self.tasks[q]
            epoch = self.epochs.get(q, 0)
            if self.leases.valid(q) and epoch == self.leases.held[q].epoch:
                log.warning("partition %d: applier ended while its lease is held; starting it again", q)
                self.counters["applier_restarts"] = self.counters.get("applier_restarts", 0) + 1
                self.table.hold(q, epoch, self._valid_us(q), LOADING)
                self.tasks[q] = asyncio.get_running_loop().create_task(self._apply(q, epoch))
            else:
                self.table.drop(q)
                self.leases.lose(q)

    async def balance(self) -> None:
        p = self.p
        now = self.clock()
        self.cooling = {q: t for q, t in self.cooling.items() if t > now}
        owners = {q: self.leases.owner(q) for q in range(p.partitions)}
        take, give = assign.plan(p.host_id, owners, self.hosts, self.draining, p.partitions, set(self.cooling))
        for q in give:
            await self.hand_over(q)
        for q in take:
            seen = self.leases.seen.get(q)
            before = seen.record if seen is not None else None
            epoch = await self.leases.acquire(q)
            if epoch is None:
                continue
            if before is not None and not before.released:
                self.inc("cluster_failovers_total")  # its owner let the lease expire
                log.info("partition %d: taken over from %s, whose lease expired", q, before.owner)
            log.info("partition %d: acquired with epoch %d", q, epoch)
            self.table.hold(q, epoch, self._valid_us(q), LOADING)
            self.epochs[q] = epoch
            self.tasks[q] = asyncio.get_running_loop().create_task(self._apply(q, epoch))

    async def _apply(self, q: int, epoch: int) -> None:
        try:
            await asyncio.wait_for(self.snapshots.load(q, epoch), TRANSFER_TIMEOUT_S)
            why = await applier.apply_partition(self.js, self.engine, self.table, self.p.cluster, q, epoch,
                                                self.bells[q], self.counters, self.snapshots.note,
                                                self.receipts)
            log.info("partition %d: applier stopped (%s)", q, why)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partition %d: applier failed; dropping the partition", q)
            self.table.drop(q)
            self.tasks.pop(q, None)
            try:
                await asyncio.wait_for(self.leases.release(q), REQUEST_TIMEOUT_S * 2)
            except Exception as exc:  # it runs out instead; this host may take it again
                log.warning("partition %d: release failed: %s", q, exc)

    async def hand_over(self, q: int) -> None:
        """Graceful handoff: stop applying, snapshot, release (the taker continues)."""
        epoch = self.epochs.get(q, 0)
        self._stop_task(q)
        self.table.drop(q)
        try:
            await asyncio.wait_for(self.snapshots.upload(q), TRANSFER_TIMEOUT_S)
        except Exception as exc:
            log.warning("partition %d: snapshot before handoff failed (%s); the next owner replays more", q, exc)
        await self.leases.release(q)
        self.cooling[q] = self.clock() + self.p.lease_ttl
        log.info("partition %d: handed over (epoch %d)", q, epoch)

    def _stop_task(self, q: int) -> None:
        task = self.tasks.pop(q, None)
        if task is not None:
            task.cancel()

    def _valid_us(self, q: int) -> int:
        return int(self.leases.valid_until(q) * 1_000_000)

    def publish(self) -> None:
        for q in self.tasks:
            if self.leases.valid(q):
                self.table.extend(q, self._valid_us(q))

    async def leave(self) -> None:
        if self.tasks:
            log.info("leaving the cluster: releasing %d partition lease(s)", len(self.tasks))
        for q in list(self.tasks):
            self._stop_task(q)
            self.table.drop(q, FREE)
            try:
                await self.leases.release(q)
            except Exception:
                pass
        for task in list(self.answering):
            task.cancel()  # the askers retry: the partitions' next owners answer
        try:
            await self.kv.put(names.host_key(self.p.host_id), b'{"left": true}')
        except Exception:
            pass
        await self.nc.close()
        self.connected(False)


def main(name: str, inherited: list[int] = (), supervisor_pid: int = 0) -> None:
    """Entry point in the forked child."""
    from engine import child, identity
    from engine.control.instance import Instance
    from engine.control.records import PRODUCER
    from engine.producer.api import Engine
    child.prepare(inherited, supervisor_pid)
    identity.become("cluster", name)
    inst = Instance.attach(name, PRODUCER)
    engine = Engine(inst)
    follower = Follower(inst, engine)

    async def body():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, follower.stop.set)  # only sets the event

        async def watch_parent():
            while not follower.stop.is_set():
                hdr = inst.header
                if supervisor_pid and (os.getppid() != supervisor_pid or int(hdr.stop) or int(hdr.admission_closed)):
                    follower.stop.set()
                await asyncio.sleep(0.25)
        loop.create_task(watch_parent())
        await follower.run()

    try:
        asyncio.run(body())
    finally:
        engine.close()
