"""Backpressure states with hysteresis, and admission by priority (DESIGN §8).

pressure = queued / capacity, engine-wide. Going up, a state is entered at
its threshold; going down, it is left only below a lower exit threshold, so a
pressure hovering at a boundary does not make the state flap.

    state        enter at   leave below
    normal       -          -
    warning      0.50       0.40
    critical     0.80       0.70
    overloaded   0.95       0.85

Admission: ``low`` is refused from ``critical``, ``normal`` at
``overloaded``; ``high`` only when its own lane has no room (the ring
enqueue decides that).
"""

from __future__ import annotations

from engine.results import BACKPRESSURE_STATES as STATES
NORMAL, WARNING, CRITICAL, OVERLOADED = range(4)
ENTER = (0.0, 0.50, 0.80, 0.95)
LEAVE = (0.0, 0.40, 0.70, 0.85)
# Lowest state at which each priority is refused (high: never by state).
REFUSED_FROM = {"high": len(STATES), "normal": OVERLOADED, "low": CRITICAL}


def next_state(current: int, pressure: float) -> int:
    up = max(level for level in range(len(STATES)) if pressure >= ENTER[level])
    if up > current:
        return up
    state = current
    while state > NORMAL and pressure < LEAVE[state]:
        state -= 1
    return state


def admits(priority: str, state: int) -> bool:
    return state < REFUSED_FROM[priority]
