"""``Hooks``: behaviour that tests inject into the engine's processes.

Production code never reads these from flags or the environment: only code
that builds a ``Supervisor`` (the CLI passes the defaults, which do nothing;
tests pass their own through ``tests/launch.py``) decides them, and the
supervisor hands them to the children it forks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hooks:
    # A worker whose batch holds this id exits as if the batch crashed it
    # (poison-batch and dead-letter tests).
    crash_on_id: int | None = None
    # A snapshot child sleeps this long before it writes (holds its temp
    # directory open: kill-during-snapshot tests).
    snapshot_pause_s: float = 0.0
    # Recovery sleeps this long after loading each snapshot (a slow load
    # without a large snapshot: recovery-versus-watchdog tests).
    recovery_delay_s: float = 0.0


NONE = Hooks()
