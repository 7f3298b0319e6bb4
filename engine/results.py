"""What the engine's calls return, local and remote alike: ``Ack``, ``ForgetResult`` and ``RecallResult``.

No shared-memory import here: the remote client (``engine.client``) uses
these without loading the engine's process code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Backpressure states, lowest first; the index is the value on the wire
# (engram.proto ``Backpressure``) and in the control block (DESIGN §8).
BACKPRESSURE_STATES = ("normal", "warning", "critical", "overloaded")


@dataclass
class Ack:
    """Outcome of one observe call. Accepted observations are always the
    leading ``accepted`` entries of the batch; the rest were rejected."""

    accepted: int
    rejected: dict[str, int] = field(default_factory=dict)
    backpressure: str = "normal"
    message: str = ""


@dataclass
class ForgetResult:
    """Outcome of one forget call. Accepted forgets are the leading
    ``accepted`` ids of the call; ``not_found`` of them named nothing the
    forget can remove (not an error): the space held no vector for them,
    taking what was acknowledged before in order (a queued observation
    counts as held, a queued forget as removed). ``applied``: every
    accepted forget was applied (no recall returns those ids any more); False
    when the call did not wait or its wait ran out first."""

    accepted: int
    not_found: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    backpressure: str = "normal"
    applied: bool = False
    message: str = ""


@dataclass
class RecallResult:
    ids: np.ndarray        # uint64 (q, k') ; k' < k when the space holds fewer than k
    distances: np.ndarray  # float32 (q, k')
    complete: bool         # False if a shard missed the deadline or is down
    # Worker slots holding a shard of the space that were not asked: their
    # recall circuit breaker is open (engine.recallhealth) or their worker is
    # down. Their results are missing, and the recall did not wait for them.
    skipped: tuple[int, ...] = ()
