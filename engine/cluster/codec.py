"""The body of one stream message: one batch of one space and priority.

Little-endian, no padding::

    0   2   magic  0x4531 ("1E")
    2   1   version: 1 observations, 2 forgets
    3   1   lane (0 high, 1 normal, 2 low; forgets: 0)
    4   1   space name length L (3..64)
    5   L   space name (ASCII)
    5+L 4   n, records
    ... 8n  ids u64[n]
    ... 4nd vectors f32[n, d]   (observations only)

A forget travels through the log like an observation, so the partition's
owner applies both in log order, and a new owner replays them in the same
order (forget and upsert: ``engine.ledger``).

The front builds it from the bytes the client sent (already checked by the
gateway's unpacking and validation); the follower decodes it as untrusted
input (a malformed body is skipped and counted, never fatal).
"""

from __future__ import annotations

import struct

import numpy as np

from engine.control.layouts import LANES
from engine.errors import InvalidInput

MAGIC, VERSION, VERSION_FORGET = 0x4531, 1, 2
_HEAD = struct.Struct("<HBBB")


def encode(space: str, lane: int, ids: np.ndarray, vectors: np.ndarray) -> bytes:
    name = space.encode("ascii")
    ids = np.ascontiguousarray(ids, "<u8")
    vectors = np.ascontiguousarray(vectors, "<f4")
    return b"".join((_HEAD.pack(MAGIC, VERSION, lane, len(name)), name, struct.pack("<I", len(ids)),
                     ids.tobytes(), vectors.tobytes()))


def encode_forget(space: str, ids: np.ndarray) -> bytes:
    name = space.encode("ascii")
    ids = np.ascontiguousarray(ids, "<u8")
    return b"".join((_HEAD.pack(MAGIC, VERSION_FORGET, 0, len(name)), name, struct.pack("<I", len(ids)),
                     ids.tobytes()))


def decode(body: bytes, dim: int) -> tuple[str, str, np.ndarray, np.ndarray | None]:
    """(space, priority, ids u64[n], vectors f32[n, dim], or None for a
    message of forgets); InvalidInput when malformed."""
    if len(body) < _HEAD.size:
        raise InvalidInput("stream message too short")
    magic, version, lane, length = _HEAD.unpack_from(body)
    if version == VERSION_FORGET:
        dim = 0
    if magic != MAGIC or version not in (VERSION, VERSION_FORGET) or lane >= len(LANES):
        raise InvalidInput(f"not an engram batch (magic {magic:#x}, version {version}, lane {lane})")
    o = _HEAD.size
    space = body[o:o + length].decode("ascii", "replace")
    o += length
    if len(body) < o + 4:
        raise InvalidInput("stream message cut short")
    (n,) = struct.unpack_from("<I", body, o)
    o += 4
    if len(body) != o + n * (8 + 4 * dim):
        raise InvalidInput(f"stream message of {len(body)} bytes does not hold {n} records of dim {dim}")
    ids = np.frombuffer(body, "<u8", n, o)
    if version == VERSION_FORGET:
        return space, LANES[lane], ids, None
    vectors = np.frombuffer(body, "<f4", n * dim, o + 8 * n).reshape(n, dim)
    return space, LANES[lane], ids, vectors
