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


def resolve(kind: str, cfg=None) -> Callable:
    """The entry point of a child of ``kind`` (in cluster mode the gateway is
    the cluster front, which publishes to the log, and a log follower runs)."""
    if kind == "worker":
        from engine.worker.loop import main
    elif kind == "gateway" and getattr(cfg, "cluster", None):
        from engine.cluster.front import main
    elif kind == "gateway":
        from engine.gateway.server import main
    elif kind == "cluster":
        from engine.cluster.follower import main
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
    if getattr(cfg, "cluster", None):
        from engine.cluster import bootstrap
        from engine.supervisor.preflight import check_name_free
        cfg = bootstrap.prepare(cfg, check_name_free)  # refusals raise ConfigError: exit 2
    return Supervisor(cfg, ForkSpawner(resolve, hooks), checks=(check_room_for_spaces,))
