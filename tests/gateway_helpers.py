"""Helpers of the gateway tests: the gateway's port, a stream driven message
by message, and counts read from the engine's shared memory."""

from __future__ import annotations

import queue
import socket

import numpy as np

from engine.rpc import engram_pb2 as pb
from tests.harness import wait_for

DIM = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_port(ep) -> int:
    return wait_for(lambda: int(ep.engine().inst.header.gateway_port), 30, message="gateway port")


def target(ep) -> str:
    return f"127.0.0.1:{gateway_port(ep)}"


def vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def enqueued(ep) -> int:
    """Observations ever queued into the rings (heads only grow): a duplicate shows here."""
    return sum(r.head for r in ep.engine().inst.rings)


def inserted(ep, space: str) -> int:
    eng = ep.engine()
    idx = eng.spaces.lookup(space)
    return 0 if idx is None else int(eng.inst.shard_counts[:, idx].sum())


class RawStream:
    """An ObserveStream driven message by message (for protocol-level checks)."""

    def __init__(self, stub, metadata=()):
        self.out = queue.Queue()
        self.call = stub.ObserveStream(iter(self.out.get, None), metadata=metadata)

    def send(self, **kind) -> None:
        self.out.put(pb.ClientMessage(**kind))

    def reply(self, kind: str):
        for msg in self.call:
            if msg.WhichOneof("kind") == kind:
                return getattr(msg, kind)
        raise AssertionError(f"stream ended before a {kind}")

    def batch(self, first: int, ids, vecs=None, raw_vectors: bytes | None = None) -> pb.BatchAck:
        ids_b = np.asarray(ids, "<u8").tobytes()
        vec_b = raw_vectors if raw_vectors is not None else np.asarray(vecs, "<f4").tobytes()
        self.send(batch=pb.Batch(first_sequence=first, ids=ids_b, vectors=vec_b))
        return self.reply("ack")

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()
