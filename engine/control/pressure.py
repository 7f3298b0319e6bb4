"""Moves the shared backpressure state along with the pressure seen now.

Called by every producer before admission and by the supervisor on each tick
(so the state also falls back when no producer is active). While any running
worker cannot write its data directory (``unwritable``), the state is held at
``overloaded`` whatever the pressure, and producers refuse every priority
with the message ``unwritable`` returns: an accepted observation could not
be logged. The state word
``hdr.bp_state`` changes only under control lock 0; ``on_change`` is
called with (old, new) by the process that made a transition, exactly once
per transition.
"""

from __future__ import annotations

import errno
import os
import time

from engine.control import admission
from engine.control.layouts import LOCK_CONTROL
from engine.control.records import RUNNING
from engine.control.instance import CONTROL_LOCK_TIMEOUT_S, Instance
from shm.errors import LockTimeout


def unwritable(inst: Instance) -> str:
    """'' or why admission is stopped: the running slots whose worker cannot
    write its write-ahead log (``LiveRecord.unwritable`` = errno)."""
    flags = inst.live_column("unwritable")
    if not flags.any():
        return ""
    states = inst.sup_column("state")
    bad = [(s, int(flags[s])) for s in range(inst.slots) if flags[s] > 0 and states[s] == RUNNING]
    if not bad:
        return ""
    causes = ", ".join(f"slot {s}: {errno.errorcode.get(e, e)} ({os.strerror(e) if 0 < e < 4096 else '?'})"
                       for s, e in bad)
    return (f"data directory {inst.params.data_dir} is not writable ({causes}); admission is stopped "
            f"until the write-ahead log can be written again (free disk space)")


def _target(inst: Instance, current: int) -> int:
    if unwritable(inst):
        return admission.OVERLOADED
    return admission.next_state(current, inst.pressure())


def refresh(inst: Instance, on_change=None) -> int:
    hdr = inst.header
    current = int(hdr.bp_state)
    if not 0 <= current < len(admission.STATES):
        current = admission.NORMAL  # corrupt word: start over from normal
    new = _target(inst, current)
    if new == current:
        return current
    try:
        inst.locks.acquire(LOCK_CONTROL, CONTROL_LOCK_TIMEOUT_S)
    except LockTimeout:
        return current  # a holder is stopped: the state moves at the next call
    try:
        current = int(hdr.bp_state)
        if not 0 <= current < len(admission.STATES):
            current = admission.NORMAL
        new = _target(inst, current)
        if new != current:
            hdr.bp_state = new
            hdr.bp_changed_ms = int(time.time() * 1000)
            if on_change is not None:
                on_change(current, new)
    finally:
        inst.locks.release(LOCK_CONTROL)
    return new
