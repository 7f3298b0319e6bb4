"""The supervisor's record of one child, and the restart policy.

Policy (``RestartPolicy.on_exit``), per child: each unexpected exit is
remembered for ``flap_window`` seconds. The child restarts after
``0.1 s × 2^(exits in window − 1)``, at most ``backoff_max``. A worker that
exits ``flap_restarts`` times within the window is parked for
``park_seconds`` instead (the exporter and the gateway are never parked:
they only back off).
Pure bookkeeping on injected times, so it is tested without processes.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

FIRST_BACKOFF_S = 0.1


@dataclass
class Child:
    index: int             # worker slot, or -1 for the exporter and the gateway
    cpu: int | None
    kind: str = "worker"
    proc: object = None
    pid: int = 0
    spawned_at: float = 0.0
    next_start: float = 0.0
    parked_until: float = 0.0
    exits: collections.deque = field(default_factory=collections.deque)
    killed_as_hung: bool = False
    last_reason: str = "crash"

    @property
    def label(self) -> str:
        return f"worker slot {self.index}" if self.kind == "worker" else self.kind


@dataclass(frozen=True)
class RestartPolicy:
    flap_restarts: int
    flap_window: float
    park_seconds: float
    backoff_max: float

    def on_exit(self, child: Child, now: float, may_park: bool = True) -> bool:
        """Record an unexpected exit; returns True if the child is now parked.
        ``may_park`` False (the last slot that can run) backs off instead."""
        child.exits.append(now)
        while child.exits and now - child.exits[0] > self.flap_window:
            child.exits.popleft()
        if may_park and child.kind == "worker" and len(child.exits) >= self.flap_restarts:
            child.parked_until = now + self.park_seconds
            return True
        child.next_start = now + min(FIRST_BACKOFF_S * 2 ** (len(child.exits) - 1), self.backoff_max)
        return False

    def due(self, child: Child, now: float) -> bool:
        """Whether a stopped child should be started now (ends a parking that is over)."""
        if child.parked_until:
            if now < child.parked_until:
                return False
            child.parked_until = 0.0
            child.exits.clear()
        return now >= child.next_start
