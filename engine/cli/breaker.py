"""``engram-stream breaker SLOT open|close|auto``: the manual override of a recall breaker.

The override lives in the slot's ``BreakerRecord`` (shared memory), so it
applies to every process that recalls at once, and stays until ``auto``.
"""

from __future__ import annotations

from engine.control import recallstate
from engine.control.records import (BREAKER_STATE_NAMES, OVERRIDE_AUTO, OVERRIDE_CLOSED, OVERRIDE_NAMES,
                                    OVERRIDE_OPEN)
from engine.errors import ConfigError

ACTIONS = {"open": OVERRIDE_OPEN, "close": OVERRIDE_CLOSED, "auto": OVERRIDE_AUTO}


def add_arguments(parser) -> None:
    parser.add_argument("slot", type=int, help="worker slot")
    parser.add_argument("action", choices=sorted(ACTIONS), help="force open, force closed, or automatic")


def run(eng, slot: int, action: str) -> str:
    inst = eng.inst
    if not 0 <= slot < inst.slots:
        raise ConfigError(f"slot {slot} out of range: the instance has slots 0..{inst.slots - 1}")
    eng.breakers.override(slot, ACTIONS[action])
    rec = recallstate.breaker(inst, slot)
    return (f"worker slot {slot}: breaker override {OVERRIDE_NAMES[int(rec.override)]} "
            f"(automatic state {BREAKER_STATE_NAMES.get(int(rec.state), 'unknown')})")
