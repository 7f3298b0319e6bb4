"""How fast the engine drains its queues, and the retry-after hint from it.

Ring tails only grow (``shm.ring``): the sum of every ring's tail is the
number of observations ever committed. ``DrainMeter`` samples it and keeps an
exponentially weighted rate; ``retry_after_s`` turns the queued excess into
a wait: the time the engine needs, at that rate, to bring pressure below the
level at which the state that refuses (or slows) the sender is left
(``engine.control.admission``).
"""

from __future__ import annotations

import time

from engine.control import admission

MIN_RETRY_S = 0.05
MAX_RETRY_S = 30.0
UNKNOWN_RATE_RETRY_S = 1.0
SMOOTHING_S = 2.0  # time constant of the rate average


class DrainMeter:
    def __init__(self, rings, clock=time.monotonic):
        self.rings = rings
        self.clock = clock
        self.last_t = clock()
        self.last_total = self._committed()
        self.rate = 0.0  # observations committed per second

    def _committed(self) -> int:
        return sum(r.tail for r in self.rings)

    def sample(self) -> float:
        now, total = self.clock(), self._committed()
        dt = now - self.last_t
        if dt >= 0.05:
            inst_rate = max(0, total - self.last_total) / dt
            w = min(1.0, dt / SMOOTHING_S)
            self.rate = inst_rate if self.rate == 0 else self.rate + w * (inst_rate - self.rate)
            self.last_t, self.last_total = now, total
        return self.rate


def retry_after_s(state: int, priority: str, queued: int, capacity: int, rate: float,
                  lane_rejected: int = 0) -> float:
    """Seconds to wait before sending again, or 0 below ``critical`` when
    nothing was refused for a full lane."""
    refused_at = admission.REFUSED_FROM[priority]
    if state >= admission.CRITICAL:
        # wait until the state that matters is left: the one refusing this
        # priority if it is refused, else critical (the sender should slow down)
        level = refused_at if state >= refused_at else admission.CRITICAL
        excess = queued - admission.LEAVE[level] * capacity
    elif lane_rejected:
        excess = lane_rejected
    else:
        return 0.0
    if rate <= 0:
        return UNKNOWN_RATE_RETRY_S
    return min(MAX_RETRY_S, max(MIN_RETRY_S, excess / rate))
