"""Start an engine with test hooks injected (``engine.config.hooks``).

    python -m tests.launch '{"crash_on_id": 777}' run --name ... [engram-stream run flags]

The same command line as ``engram-stream run``; only the ``Hooks`` the
supervisor hands its children differ. Production code never reads hooks
from flags or the environment: this launcher is their only way in.
"""

from __future__ import annotations

import json
import sys

from engine.cli import entries
from engine.cli import main as cli
from engine.config.hooks import Hooks


def run(argv: list[str]) -> int:
    hooks = Hooks(**json.loads(argv[0]))
    cli.HANDLERS["run"] = lambda cfg: entries.supervisor(cfg, hooks).run()
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
