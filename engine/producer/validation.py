"""Checks on everything a producer hands in, before it reaches shared memory.

Each check raises ``InvalidInput`` with a message that says what was wrong
and with which value; the caller counts it as a rejection with reason
``invalid_input`` (DESIGN §8). Nothing that fails here reaches a worker.
"""

from __future__ import annotations

import numpy as np

from engine.config import valid_space
from engine.errors import InvalidInput, shown

PRIORITIES = ("high", "normal", "low")
_FLOAT_KINDS = "f"
_INT_KINDS = "iu"


def space_name(space: object) -> str:
    if not valid_space(space):
        raise InvalidInput(f"memory space {shown(space)} must match [a-z0-9_-]{{3,64}}")
    return space


def priority(value: object) -> str:
    if value not in PRIORITIES:
        raise InvalidInput(f"priority {shown(value)} must be one of {', '.join(PRIORITIES)}")
    return str(value)


def ids(values: object, max_batch: int, what: str = "observations") -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"ids are not an array of integers: {exc}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidInput(f"ids must be one-dimensional, got shape {arr.shape}")
    if len(arr) == 0:
        raise InvalidInput("empty batch: no ids")
    if len(arr) > max_batch:
        raise InvalidInput(f"batch of {len(arr)} {what} exceeds --max-batch-size={max_batch}")
    if arr.dtype.kind not in _INT_KINDS:
        if arr.dtype == object:
            try:
                arr = np.array([int(x) for x in arr], dtype=np.uint64)
            except (ValueError, TypeError, OverflowError):
                raise InvalidInput("ids must be integers in [0, 2**64)") from None
            return arr
        raise InvalidInput(f"ids must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise InvalidInput(f"ids must be in [0, 2**64), got {int(arr.min())}")
    return arr.astype(np.uint64, copy=False)


def _float_array(values: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what} is not a numeric array: {exc}") from None
    if arr.dtype.kind not in _FLOAT_KINDS:
        raise InvalidInput(f"{what} must be floating point, got dtype {arr.dtype}")
    return arr


def vectors(values: object, n: int, dim: int, metric: str) -> np.ndarray:
    """Return a C-contiguous float32 array of shape (n, dim)."""
    arr = _float_array(values, "vectors")
    if arr.ndim == 1 and n == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidInput(f"vectors must have shape ({n}, {dim}), got {arr.shape}")
    if arr.shape[0] != n:
        raise InvalidInput(f"{n} ids but {arr.shape[0]} vectors")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise InvalidInput(f"vector {row} contains NaN or Inf")
    if metric == "cosine":
        zero = ~arr.any(axis=1)
        if zero.any():
            raise InvalidInput(f"vector {int(np.flatnonzero(zero)[0])} is all zeros (no cosine direction)")
    return arr


def queries(values: object, dim: int) -> np.ndarray:
    arr = _float_array(values, "query")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
        raise InvalidInput(f"query must have shape ({dim},) or (q, {dim}), got {np.shape(values)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInput("query contains NaN or Inf")
    return arr


def top_k(k: object, max_k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= max_k:
        raise InvalidInput(f"k={shown(k)} must be an integer in [1, {max_k}]")
    return int(k)
