"""The gateways a client may use, and the policy that moves between them.

``Targets`` is the client's list and the one in use now (``current``),
shared by every call of the client: once a call finds a gateway gone, the
others go straight to the next one. ``Attempts`` is the retry plan of one
call: which gateway to try, and how long to wait first.

The policy, for a call that fails with a transport error:

* rotating (unary calls, and sessions that can move: cluster mode, or one
  not opened yet): the next target at once, round robin, as long as this
  round has targets not yet tried; after a whole round of failures, wait
  ``backoff(round)`` (50 ms doubling to 1 s) before the next round. With one
  target each failure is a round, which is the single-target client's
  retry exactly.
* pinned (a single-host session once open, see ``engine.client.session``):
  the same target again after ``backoff(failures)``.

Either way the call gives up once its deadline (``retry_timeout`` from its
start) has passed, and never waits past it. The clock is injected (STYLE
§7), so the policy is tested without sleeping or sockets.

Concurrency: ``Targets`` takes a lock for its one mutable field; an
``Attempts`` belongs to one call.
"""

from __future__ import annotations

import threading
import time

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


def backoff(attempt: int) -> float:
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** attempt)


def parse(targets) -> tuple[str, ...]:
    """``"h1:50051,h2:50051"`` or ``["h1:50051", "h2:50051"]`` -> a tuple of addresses."""
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    out = tuple(str(t).strip() for t in items)
    if not out or not all(out):
        raise ValueError(f"targets: expected HOST:PORT, several comma-separated or as a list; got {targets!r}")
    return out


class Targets:
    def __init__(self, targets):
        self.addresses = parse(targets)
        self._current = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.addresses)

    @property
    def current(self) -> int:
        return self._current

    def failed(self, index: int) -> int:
        """Target ``index`` failed: if it is still the current one, the next
        becomes current (a second call that failed on it moves nothing more).
        Returns the current index."""
        with self._lock:
            if index == self._current:
                self._current = (index + 1) % len(self.addresses)
            return self._current

    def attempts(self, deadline: float, pinned: int | None = None, start: int | None = None,
                 clock=time.monotonic) -> "Attempts":
        return Attempts(self, deadline, pinned, start, clock)


class Attempts:
    """The retry plan of one call (see the module's docstring)."""

    def __init__(self, targets: Targets, deadline: float, pinned: int | None = None, start: int | None = None,
                 clock=time.monotonic):
        """``pinned``: every attempt on that target; else round robin from
        ``start`` (default: the client's current target)."""
        self.targets = targets
        self.deadline = deadline
        self.pinned = pinned
        self.clock = clock
        self.failures = 0
        first = pinned if pinned is not None else start
        self._next = targets.current if first is None else first

    def target(self) -> int:
        """The index to try now."""
        return self._next

    def failed(self, index: int) -> float | None:
        """Attempt on ``index`` failed with a transport error: seconds to wait
        before the next attempt (on ``target()``), or None when out of time."""
        self.failures += 1
        now = self.clock()
        if now >= self.deadline:
            return None
        if self.pinned is not None:
            self.targets.failed(index)  # other calls move on; this one stays
            wait = backoff(self.failures - 1)
        else:
            self._next = self.targets.failed(index)
            n = len(self.targets)
            wait = 0.0 if self.failures % n else backoff(self.failures // n - 1)
        return min(wait, self.deadline - now)
