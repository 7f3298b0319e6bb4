"""Conversions between protobuf messages of engram.proto and numpy/engine values.

Shared by the gateway and the clients. Arrays travel as packed little-endian
bytes (``ids`` uint64, ``vectors``/``queries`` float32, row-major); a byte
length that does not divide raises ``InvalidInput`` with the numbers.
"""

from __future__ import annotations

import numpy as np

from engine.results import BACKPRESSURE_STATES as STATES
from engine.errors import InvalidInput
from engine.rpc import engram_pb2 as pb

PRIORITY_TO_PB = {"normal": pb.PRIORITY_NORMAL, "high": pb.PRIORITY_HIGH, "low": pb.PRIORITY_LOW}
PRIORITY_FROM_PB = {v: k for k, v in PRIORITY_TO_PB.items()}
# Backpressure enum values are the state indices of engine.control.admission.STATES.


def state_name(value: int) -> str:
    return STATES[value] if 0 <= value < len(STATES) else "unknown"


def priority_name(value: int) -> str:
    try:
        return PRIORITY_FROM_PB[value]
    except KeyError:
        raise InvalidInput(f"unknown priority enum value {value}") from None


def pack_ids(ids) -> bytes:
    return np.ascontiguousarray(ids, dtype="<u8").tobytes()


def pack_floats(values) -> bytes:
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def unpack_ids(raw: bytes) -> np.ndarray:
    if len(raw) % 8:
        raise InvalidInput(f"ids are {len(raw)} bytes, not a multiple of 8 (packed little-endian uint64)")
    return np.frombuffer(raw, "<u8").astype(np.uint64, copy=False)


def unpack_rows(raw: bytes, dim: int, rows: int | None, what: str) -> np.ndarray:
    """float32[rows, dim] from bytes; ``rows=None`` infers it."""
    row_bytes = 4 * dim
    if rows is None:
        if len(raw) == 0 or len(raw) % row_bytes:
            raise InvalidInput(f"{what} are {len(raw)} bytes, not a positive multiple of 4*dim = {row_bytes}")
        rows = len(raw) // row_bytes
    elif len(raw) != rows * row_bytes:
        raise InvalidInput(f"{what} are {len(raw)} bytes; {rows} rows of dim {dim} need {rows * row_bytes}")
    return np.frombuffer(raw, "<f4").reshape(rows, dim).astype(np.float32, copy=False)


def limits(p: dict) -> pb.Limits:
    return pb.Limits(dim=p.dim, metric=p.metric, max_batch=p.max_batch_size,
                     max_message_bytes=p.grpc_max_message_bytes, capacity_high=p.capacity[0],
                     capacity_normal=p.capacity[1], capacity_low=p.capacity[2], max_k=p.max_k,
                     max_sessions=p.max_sessions, session_idle_timeout_s=p.session_idle_timeout)
