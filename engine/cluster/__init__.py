"""Cluster mode (DESIGN §11): several hosts share partitions through NATS JetStream.

Data flow on every host::

  client ──gRPC──► front (gateway child, engine.cluster.front)
                     │ Observe: publish the batch to  engram.<c>.obs.<p>  (p = hash(space) mod P),
                     │          Nats-Msg-Id = session:first_sequence; ack the client after the PubAck
                     │ Recall:  serve locally if this host owns p, else forward over gRPC to the owner
                     │ Forget:  publish like a batch; a unary call then asks the owner, request/reply
                     │          on engram.<c>.forgot.<p>, until applied (engine.cluster.receipts)
                     ▼
  JetStream stream ENGRAM_<c> (file storage, --log-replicas), KV bucket engram-<c>
  (meta, hosts.<id>, leases.<p>), object store engram-<c>-snap (one snapshot per partition)
                     │
                     ▼
  follower (supervisor child, engine.cluster.follower), asyncio:
     heartbeat → leases (CAS on KV revisions; epoch fencing) → assignment/handoff
     → one applier per owned partition: pull in stream order → local producer path
       (engine.producer.api.Engine.observe_into) whose ring publish journal advances the
       partition's position in shared memory (engine.control.partitions) atomically
     → snapshots: the partition's applied records to the object store; stream prefix purged
     → receipts: answers "applied?" (and not_found) for forgets of the partitions it holds

Nothing here replicates or elects: JetStream replicates the log, the KV's
compare-and-set decides owners. The control block stays the only contract
between the follower and the front on one host; the receipts of forgets
travel between hosts, so they go over NATS, even to the front beside the owner.
"""
