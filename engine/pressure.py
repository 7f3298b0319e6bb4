"""Moves the shared backpressure state along with the pressure seen now.

Called by every producer before admission and by the supervisor on each tick
(so the state also falls back when no producer is active). The state word
``hdr[H_BP_STATE]`` changes only under control lock 0; ``on_change`` is
called with (old, new) by the process that made a transition, exactly once
per transition.
"""

from __future__ import annotations

from engine import admission
import time

from engine.instance import H_BP_CHANGED_MS, H_BP_STATE, LOCK_CONTROL, Instance


def refresh(inst: Instance, on_change=None) -> int:
    hdr = inst.hdr
    current = int(hdr[H_BP_STATE])
    if not 0 <= current < len(admission.STATES):
        current = admission.NORMAL  # corrupt word: start over from normal
    new = admission.next_state(current, inst.pressure())
    if new == current:
        return current
    with inst.locks.hold(LOCK_CONTROL):
        current = int(hdr[H_BP_STATE])
        if not 0 <= current < len(admission.STATES):
            current = admission.NORMAL
        new = admission.next_state(current, inst.pressure())
        if new != current:
            hdr[H_BP_STATE] = new
            hdr[H_BP_CHANGED_MS] = int(time.time() * 1000)
            if on_change is not None:
                on_change(current, new)
    return new
