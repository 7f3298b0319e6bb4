"""Names and numbers every cluster process agrees on.

Partition of a space: ``stable_hash(space) mod P`` with the blake2b hash of
``engine.producer.routing`` (the same in every process, host and run).

Position of a partition on a host (``engine.control.partitions``): one
integer ``(stream_sequence << OFFSET_BITS) | offset`` that names the next
record to apply: ``offset`` records of the message at ``stream_sequence``
are already in a ring. A message normally goes into one ring whole (offset
goes 0 → next sequence), but when no ring has room for all of it a leading
part goes in, and the offset says where to continue. A session-style
``advance(first, n)`` on this integer is exactly right for both cases.
"""

from __future__ import annotations

from engine.producer.routing import stable_hash

OFFSET_BITS = 16           # > --max-batch-size's largest useful value (10,000 by default)
MAX_MESSAGE_RECORDS = (1 << OFFSET_BITS) - 1


def partition_of(space: str, partitions: int) -> int:
    return stable_hash(space) % partitions


def stream(cluster: str) -> str:
    return f"ENGRAM_{cluster}"


def subject(cluster: str, partition: int) -> str:
    return f"engram.{cluster}.obs.{partition}"


def subjects(cluster: str) -> str:
    return f"engram.{cluster}.obs.*"


def receipt_subject(cluster: str, partition: int) -> str:
    """Core NATS request/reply (``engine.cluster.receipts``); outside the stream's subjects."""
    return f"engram.{cluster}.forgot.{partition}"


def receipt_subjects(cluster: str) -> str:
    return f"engram.{cluster}.forgot.*"


def bucket(cluster: str) -> str:
    return f"engram-{cluster}"


def snapshot_bucket(cluster: str) -> str:
    return f"engram-{cluster}-snap"


def snapshot_object(partition: int) -> str:
    return f"partition-{partition}"


def lease_key(partition: int) -> str:
    return f"leases.{partition}"


def host_key(host_id: str) -> str:
    return f"hosts.{host_id}"


META_KEY = "meta"


def position(seq: int, offset: int = 0) -> int:
    return (seq << OFFSET_BITS) | offset


def split_position(pos: int) -> tuple[int, int]:
    return pos >> OFFSET_BITS, pos & MAX_MESSAGE_RECORDS


def msg_id(session_id: int, first_sequence: int) -> str:
    """``Nats-Msg-Id`` of a session batch: a retry of the same batch (same
    session, same first sequence) within the stream's duplicate window is
    stored once."""
    return f"{session_id}:{first_sequence}"
