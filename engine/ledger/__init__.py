"""Forget and upsert: one identity per (space, id), whichever shard holds it.

Data flow::

    producer: stamp each operation (stamps) ──► ring (kind, stamp per record)
    worker:   apply a claim's operations to the identity table (book):
                newer-or-equal stamp wins, an older one is dropped
              ├─ observe won: insert into this slot's shard
              └─ forget won:  mark deleted here if held here
              recall: a result counts only if the table says this slot
              holds it (a copy left behind by stealing is marked deleted
              when met); compaction (compaction) rebuilds a shard whose
              dead share passes --compact-ratio
    storage:  the log carries kinds and stamps; a snapshot carries the
              table rows of its slot; recovery applies both again
    supervisor: drops tombstones no older operation can still meet (tombstones)

Why a shared table: stealing puts one space's ids into several workers'
shards, and lanes and stealing apply operations out of acknowledged order.
A stamp per operation says which of two operations on one key came later;
the table keeps, per key, the stamp of the newest applied one and who holds
the vector (or who forgot it). hnswlib's own ``replace_deleted`` is not used:
it loses and duplicates labels (bench/hnsw_deletes.py).
"""
