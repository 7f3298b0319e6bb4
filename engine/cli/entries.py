"""What ``engram-stream run`` starts: the supervisor, wired to the entry
point of each kind of child and to the data directory's start-up checks.

The supervisor package names no other process package (the import rules,
tests/unit/test_import_rules.py): the command line, which may use them all,
hands it ``resolve`` and the checks here. Imports stay inside ``resolve``,
so the supervisor loads a child's modules only when it first starts one.
"""

from __future__ import annotations

from typing import Callable

from engine.config.hooks import NONE, Hooks


def resolve(kind: str) -> Callable:
    if kind == "worker":
        from engine.worker.loop import main
    elif kind == "gateway":
        from engine.gateway.server import main
    elif kind == "exporter":
        from engine.exporter.server import main
    elif kind == "prober":
        from engine.prober.main import main
    else:
        raise ValueError(f"no child of kind {kind!r}")
    return main


def supervisor(cfg, hooks: Hooks = NONE):
    """The ``Supervisor`` of ``run``; tests pass ``hooks`` (tests/launch.py)."""
    from engine.storage.inventory import check_room_for_spaces
    from engine.supervisor.arbiter import Supervisor
    from engine.supervisor.spawner import ForkSpawner
    return Supervisor(cfg, ForkSpawner(resolve, hooks), checks=(check_room_for_spaces,))
