"""The gateway child in cluster mode: the gateway's service, with the stream behind it.

Same gRPC service, sessions and checks as ``engine.gateway.service`` (it
subclasses ``Gateway``), with two differences:

* Observe: an accepted batch is published to its partition's subject
  (``engine.cluster.codec``) with ``Nats-Msg-Id = session:first_sequence``,
  and the session advances only after the PubAck, so an acknowledged batch
  is in the replicated stream. The partition's owner applies it
  (``engine.cluster.follower``). A retry of the same batch after a lost ack
  is stored once by the stream's duplicate window; its PubAck says
  ``duplicate`` and so does the batch's ack. Nothing is queued into this
  host's rings here. Sessions resume through any gateway of the cluster
  (``self.cluster``, ``engine.gateway.opening``): the message id, not the
  session table, is what keeps a resent batch from being stored twice.
  The wait for the PubAck is ``cluster_publish_latency_seconds``; a batch
  not acknowledged counts in ``cluster_publish_failures_total``.
* Recall: served from this host when it owns the space's partition and the
  partition table says it is serving under a valid lease; else forwarded
  over gRPC to the owner (``engine.cluster.forward``). ``fresh=True``: the
  owner first waits until it applied the partition up to the stream's last
  sequence at the time of the request. During a failover (no live owner, or
  the lease moved while answering) the answer is empty with
  ``complete=false`` and a ``reason``; never data of a stale owner.
* Forget (the unary call and a session's forget batches): published to the
  partition's subject like observations (``engine.cluster.codec`` version
  2), so the owner applies forgets and observations of a space in log
  order, and a new owner replays them in the same order. A session's
  forget batch is deduplicated like an observe batch (its message id); a
  unary forget gets a message id of its own, so a client's retry after a
  lost answer is a second forget (harmless: forgetting twice is idempotent
  for the ids, and an observe acknowledged in between stays ordered by the
  log). The unary call then asks the partition's owner, whichever host it
  is, over core NATS until it applied them (``engine.cluster.receipts``):
  ``applied`` and ``not_found`` come from the owner, the same through any
  gateway. Not confirmed by the deadline (no owner during a failover, a
  backlog, or ``no_wait``): ``applied`` False and ``not_found`` 0, with a
  message; they are applied later in log order, and a ``fresh`` recall,
  which waits for the owner to catch up with the log, already never returns
  them. A session's forget batch is acknowledged once the log stored it,
  before any owner applied it: its ``not_found`` is 0.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import grpc
import numpy as np

from engine.cluster import codec, names
from engine.cluster.forward import Forwarder
from engine.cluster.logclient import LogClient, owner_address
from engine.control.layouts import LANE_INDEX
from engine.control.partitions import P_NEXT_POS, PartitionTable
from engine.errors import InvalidInput
from engine.gateway.forgetting import wait_s
from engine.gateway.service import Gateway
from engine.producer import validation
from engine.rpc import engram_pb2 as pb
from engine.rpc import wire

log = logging.getLogger("engram.gateway")

FORWARDED = "engram-forwarded"      # metadata key: a forwarded recall is never forwarded again
FRESH_POLL_S = 0.005
DEFAULT_DEADLINE_S = 5.0
FORGET_STORED = ("stored in the cluster's log; partition {p}'s owner applies it in log order{why} (a fresh "
                 "recall already never returns these ids; not_found is known once applied, 0 here)")
FORGET_COUNT_UNKNOWN = ("applied; not_found is not known (reported as 0): partition {p}'s owner took it over after "
                        "these forgets were applied")


class ClusterGateway(Gateway):
    def __init__(self, inst, writer, log_client: LogClient):
        super().__init__(inst, writer)
        self.log = log_client
        self.table = PartitionTable(inst.partition_rows)
        self.forwarder = Forwarder(self.p)
        self.counts = {"published": 0, "publish_failures": 0, "forwarded": 0, "unowned": 0, "deduplicated": 0}
        self.cluster = self.p.cluster

    def partition(self, space: str) -> int:
        return names.partition_of(space, self.p.partitions)

    # -- observe ------------------------------------------------------------------
    def _queue(self, row: int, space: str, priority: str, ids, vectors, nxt: int, ack, idx, context) -> None:
        """Publish the batch's new observations to the partition's subject and
        advance the session only after the log's PubAck (the log is the buffer:
        no local admission here)."""
        n = len(ids)
        try:
            ids_ok = validation.ids(ids, min(self.p.max_batch_size, names.MAX_MESSAGE_RECORDS))
            vecs_ok = validation.vectors(vectors, len(ids_ok), self.p.dim, self.p.metric)
        except InvalidInput as exc:
            self.engine.count_rejected(idx, "invalid_input", n)
            ack.rejected["invalid_input"] = n
            ack.message = str(exc)
            return
        body = codec.encode(space, LANE_INDEX[priority], ids_ok, vecs_ok)
        puback = self._publish(space, body, names.msg_id(self.sessions.session_id(row), nxt),
                               "batch (a resent batch is stored once)", context)
        self.sessions.advance(row, nxt, len(ids_ok))
        if puback.duplicate:
            # A resend of a batch the stream already holds (its ack was lost,
            # perhaps on another gateway): acknowledged, never applied twice.
            self.counts["deduplicated"] += 1
            self.engine.count_rejected(idx, "duplicate", len(ids_ok))
            ack.rejected["duplicate"] = ack.rejected.get("duplicate", 0) + len(ids_ok)
            ack.message = (f"observations from {nxt} were already stored in the cluster's log "
                           f"(a resend after a lost ack); not stored again")
            return
        self.counts["published"] += 1
        ack.accepted = len(ids_ok)

    def _finish(self, ack, priority: str) -> pb.BatchAck:
        ack.backpressure = 0  # local backpressure does not apply: the log takes the batch
        return ack

    # -- forget --------------------------------------------------------------------
    def _publish(self, space: str, body: bytes, msg_id: str, what: str, context):
        """Publish one message to the space's partition; the PubAck, or an
        UNAVAILABLE abort when the log did not acknowledge it."""
        t0 = time.monotonic()
        try:
            puback = self.log.publish(self.partition(space), body, msg_id)
        except Exception as exc:
            self.counts["publish_failures"] += 1
            self.engine.record(lambda w: w.inc("cluster_publish_failures_total"))
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"the cluster's log did not acknowledge the {what} ({type(exc).__name__}: "
                          f"{exc}); resend it")
        waited = time.monotonic() - t0
        self.engine.record(lambda w: w.observe("cluster_publish_latency_seconds", waited))
        return puback

    def Forget(self, request, context):
        try:
            space = validation.space_name(request.space)
            ids = validation.ids(wire.unpack_ids(request.ids), min(self.p.max_batch_size,
                                                                   names.MAX_MESSAGE_RECORDS))
        except InvalidInput as exc:
            self.engine.count_rejected(self._known_space(request.space), "invalid_input",
                                       max(1, len(request.ids) // 8))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        p = self.partition(space)
        puback = self._publish(space, codec.encode_forget(space, ids), f"forget:{uuid.uuid4().hex}", "forget",
                               context)
        self.counts["published"] += 1
        res = pb.ForgetResponse(count=len(ids), accepted=len(ids), backpressure=0,
                                message=FORGET_STORED.format(p=p, why=""))
        if request.no_wait:
            return res
        t0 = time.monotonic()
        try:
            receipt = self.log.receipt(p, int(puback.seq), wait_s(context.time_remaining()))
        except Exception as exc:  # stored is what the call promises; confirming is extra
            log.warning("forget stored at partition %d sequence %d; asking its owner failed: %s", p, puback.seq, exc)
            receipt = None
        waited, result = time.monotonic() - t0, "unconfirmed" if receipt is None else "applied"
        self.engine.record(lambda w: w.observe("cluster_forget_confirm_seconds", waited, result=result))
        if receipt is None:
            res.message = FORGET_STORED.format(p=p, why=", and had not confirmed it before the call's deadline")
        elif receipt.get("not_found") is None:
            res.applied, res.message = True, FORGET_COUNT_UNKNOWN.format(p=p)
        else:
            res.applied, res.not_found, res.message = True, int(receipt["not_found"]), ""
        return res

    def _queue_forget(self, row: int, space: str, ids, nxt: int, ack, context) -> None:
        """Publish a session batch's new forgets; the session advances after the PubAck."""
        try:
            ids = validation.ids(ids, min(self.p.max_batch_size, names.MAX_MESSAGE_RECORDS))
        except InvalidInput as exc:
            self.engine.count_rejected(self.engine.spaces.lookup(space), "invalid_input", len(ids))
            ack.rejected["invalid_input"] = len(ids)
            ack.message = str(exc)
            return
        puback = self._publish(space, codec.encode_forget(space, ids),
                               names.msg_id(self.sessions.session_id(row), nxt), "forget batch", context)
        self.sessions.advance(row, nxt, len(ids))
        if puback.duplicate:
            self.counts["deduplicated"] += 1
            ack.rejected["duplicate"] = ack.rejected.get("duplicate", 0) + len(ids)
            ack.message = f"forgets from {nxt} were already stored in the cluster's log; not stored again"
            return
        self.counts["published"] += 1
        ack.accepted = len(ids)

    def _recall(self, req, context) -> pb.RecallResponse:
        try:
            space = validation.space_name(req.space)
            queries = wire.unpack_rows(req.queries, self.p.dim, None, "queries")
            # here, not only on the owner: a refusal of a forwarded recall would
            # come back as "owner did not answer" instead of INVALID_ARGUMENT
            validation.top_k(req.k, self.p.max_k)
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        p = self.partition(space)
        forwarded = any(k == FORWARDED for k, _ in context.invocation_metadata())
        remaining = context.time_remaining()
        deadline = time.monotonic() + (DEFAULT_DEADLINE_S if remaining is None else min(remaining, 60.0))
        epoch = int(self.table.rows[p, 0])
        if self.table.serving(p):
            return self._local(req, context, space, queries, p, epoch, deadline)
        if forwarded:
            return self._incomplete(len(queries), f"partition {p} is not served by this host now (moving)")
        leases, hosts = self.log.view()
        addr, reason = owner_address(leases, hosts, p, self.p.lease_ttl)
        if addr is None or addr == self.p.advertise:
            self.counts["unowned"] += 1
            return self._incomplete(len(queries), reason or f"partition {p} is being taken over by this host")
        self.counts["forwarded"] += 1
        got = self.forwarder.recall(addr, req, deadline, ((FORWARDED, "1"),))
        if got is None:
            return self._incomplete(len(queries), f"owner of partition {p} at {addr} did not answer")
        return got

    def _local(self, req, context, space, queries, p, epoch, deadline) -> pb.RecallResponse:
        if req.fresh:
            target = names.position(self.log.last_seq(p) + 1)
            while int(self.table.rows[p, P_NEXT_POS]) < target:
                if time.monotonic() >= deadline or not self.table.serving(p, epoch):
                    return self._incomplete(len(queries), f"partition {p} did not catch up with the stream "
                                                          f"before the deadline")
                time.sleep(FRESH_POLL_S)
        res = self.engine.recall(space, queries, k=req.k or 0, ef=req.ef or None, fresh=req.fresh,
                                 timeout=max(0.05, deadline - time.monotonic())) if req.k else None
        if res is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be between 1 and {self.p.max_k}")
        if not self.table.serving(p, epoch):  # fencing: the lease moved while we answered
            return self._incomplete(len(queries), f"partition {p} moved to another host during the recall")
        q, k = res.ids.shape
        return pb.RecallResponse(queries=q, k=k, ids=wire.pack_ids(res.ids),
                                 distances=wire.pack_floats(res.distances), complete=res.complete,
                                 skipped_slots=res.skipped)

    @staticmethod
    def _incomplete(q: int, reason: str) -> pb.RecallResponse:
        return pb.RecallResponse(queries=q, k=0, ids=b"", distances=b"", complete=False, reason=reason)

    # -- info ------------------------------------------------------------------------
    def Info(self, request, context):
        res = super().Info(request, context)
        try:
            leases, hosts = self.log.view()
        except Exception:
            leases, hosts = {}, {}
        owned: dict[str, list[int]] = {}
        for p, rec in sorted(leases.items()):
            if rec is not None and not rec.released:
                owned.setdefault(rec.owner, []).append(p)
        now_ms = time.time() * 1000
        res.cluster.name = self.p.cluster
        res.cluster.host_id = self.p.host_id
        res.cluster.partitions = self.p.partitions
        for hid, h in sorted(hosts.items()):
            if h.get("left"):
                continue
            res.cluster.hosts.add(id=hid, address=h.get("address", ""), draining=bool(h.get("draining")),
                                  live=now_ms - h.get("heartbeat_ms", 0) < self.p.lease_ttl * 1000,
                                  partitions=len(owned.get(hid, ())), owned=owned.get(hid, ()))
        return res


def main(name: str, inherited: list[int] = (), supervisor_pid: int = 0) -> None:
    """Entry point in the forked child (the gateway's, with the stream behind it)."""
    from engine import child, identity
    from engine.control.instance import Instance
    from engine.control.records import GATEWAY
    from engine.gateway import conventions
    from engine.gateway.server import TICK_S, build_server
    from metrics.writer import MetricWriter, NullWriter
    child.prepare(inherited, supervisor_pid)
    identity.become("gateway", name)
    inst = Instance.attach(name, GATEWAY)
    p = inst.params
    writer = NullWriter() if p.no_metrics else MetricWriter(inst.metrics, inst.metrics.row_map.GATEWAY)
    log_client = LogClient(p)
    gw = ClusterGateway(inst, writer, log_client)
    health = conventions.HealthPublisher(inst)
    server, port = build_server(gw, p, health)
    inst.header.gateway_pid = os.getpid()
    inst.header.gateway_port = port
    identity.become("gateway", name, port=port)
    log.info("cluster gateway of host %r serving gRPC on %s (port %d)", p.host_id, p.grpc_addr, port)
    try:
        while os.getppid() == supervisor_pid or not supervisor_pid:
            if int(inst.header.sup_pid) != supervisor_pid and supervisor_pid:
                break
            time.sleep(TICK_S)
            gw.tick()
            health.update()
            up = 1.0 if log_client.connected else 0.0
            gw.engine.record(lambda w: w.set("cluster_log_connected", up, client="front"))
    finally:
        health.shutdown()
        server.stop(grace=1.0)
        gw.forwarder.close()
        log_client.close()
        gw.engine.record(lambda w: w.set("cluster_log_connected", 0.0, client="front"))


__all__ = ["ClusterGateway", "main", "np"]
