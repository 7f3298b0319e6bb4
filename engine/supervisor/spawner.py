"""How the supervisor starts and signals its children: injected, so that the
arbiter's steps are testable with fake processes (STYLE §7).

``ForkSpawner`` forks a real child. Which function a child runs is not
known here: ``resolve(kind)`` (``engine.cli.entries``) names the entry point
of each kind, so the supervisor package imports no other process package.
A process handle is anything with ``pid``, ``exitcode`` (None while it
runs) and ``join(timeout)``, as ``multiprocessing.Process``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Callable

from engine.config.hooks import NONE as NO_HOOKS, Hooks
from engine.supervisor.children import Child

# The stdlib's fork context: a child gets the parent's built state (STYLE
# §3) and nothing is pickled, so a serialising library (dill, as the
# ``multiprocess`` package uses) would buy nothing here.
_FORK = multiprocessing.get_context("fork")


class ForkSpawner:
    def __init__(self, resolve: Callable[[str], Callable], hooks: Hooks = NO_HOOKS):
        self.resolve = resolve
        self.hooks = hooks

    def start(self, child: Child, cfg, inherited: list[int]):
        """Fork ``child`` and return its process handle."""
        target = self.resolve(child.kind, cfg)
        parent = os.getpid()
        if child.kind == "worker":
            args = (child.index, cfg.name, child.cpu, inherited, parent, self.hooks)
        elif child.kind == "exporter":
            args = (cfg.name, cfg.metrics_addr, inherited, parent)
        else:
            args = (cfg.name, inherited, parent)
        proc = _FORK.Process(target=target, args=args, name=f"engram-{child.kind}", daemon=False)
        proc.start()
        return proc

    def signal(self, child: Child, sig: int) -> None:
        """Send ``sig`` to ``child`` if it still runs (a reaped pid is never signalled)."""
        if child.proc is None or not child.pid:
            return
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, child: Child) -> None:
        self.signal(child, signal.SIGKILL)
