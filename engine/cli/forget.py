"""``engram-stream forget``: remove observations by id from the shell.

Ids come from ``--ids`` and ``--ids-file`` (both may be given; the file
holds ids separated by newlines, whitespace or commas). They are sent
through the same-host API (``engine.connect(--name).forget``) in calls of
at most ``--max-batch-size`` ids, each waiting up to what is left of
``--wait`` for application. The command prints what was accepted, not
found and applied; ``run`` says whether that is a success (every id
accepted and, unless ``--wait 0``, applied), and ``engine.cli.main`` turns
it into the exit code (0, else 1; bad or missing ids are a ConfigError: 2).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from engine.config.parsers import id_list
from engine.errors import ConfigError
from engine.results import ForgetResult


def read_ids(cfg) -> np.ndarray:
    """The ids of ``--ids`` and ``--ids-file``, in that order; ConfigError names the bad one."""
    ids = list(cfg.ids or ())
    if cfg.ids_file is not None:
        try:
            with open(cfg.ids_file) as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"--ids-file={cfg.ids_file!r}: {exc.strerror}") from None
        try:
            ids += id_list(text)
        except ValueError as exc:
            raise ConfigError(f"--ids-file={cfg.ids_file!r}: {exc}") from None
    if not ids:
        raise ConfigError("forget needs ids: --ids ID,ID,... or --ids-file FILE (which holds none)"
                          if cfg.ids_file is not None else "forget needs ids: --ids ID,ID,... or --ids-file FILE")
    return np.array(ids, dtype=np.uint64)


def forget_all(eng, space: str, ids: np.ndarray, wait: float, clock=time.monotonic) -> ForgetResult:
    """``eng.forget`` in calls of at most ``--max-batch-size`` ids; stops at
    the first call that refuses some (the rest are reported as refused for
    the same reason)."""
    deadline = clock() + wait
    total = ForgetResult(0, 0, {}, "normal", applied=wait > 0)
    step = eng.params.max_batch_size
    for lo in range(0, len(ids), step):
        part = ids[lo:lo + step]
        got = eng.forget(space, part, wait=wait > 0, timeout=max(0.0, deadline - clock()))
        total.accepted += got.accepted
        total.not_found += got.not_found
        total.backpressure, total.message = got.backpressure, got.message or total.message
        total.applied = total.applied and got.applied
        if got.rejected:
            for reason, n in got.rejected.items():
                total.rejected[reason] = total.rejected.get(reason, 0) + n
            left = len(ids) - lo - len(part)
            if left:
                reason = next(iter(got.rejected))
                total.rejected[reason] += left
            break
    return total


def run(cfg) -> bool:
    from engine.producer.api import connect
    ids = read_ids(cfg)
    with connect(cfg.name) as eng:
        res = forget_all(eng, cfg.space, ids, cfg.wait)
    ok = not res.rejected and (res.applied or cfg.wait == 0)
    if cfg.json:
        print(json.dumps({"space": cfg.space, "ids": len(ids), "accepted": res.accepted,
                          "not_found": res.not_found, "rejected": res.rejected, "applied": res.applied,
                          "backpressure": res.backpressure, "message": res.message}))
        return ok
    state = ("applied" if res.applied else "nothing to apply" if not res.accepted
             else "not waited for" if cfg.wait == 0
             else f"NOT yet applied after {cfg.wait:g}s (they stay queued and will be)")
    print(f"space {cfg.space}: {res.accepted} of {len(ids)} forget(s) accepted, {res.not_found} not found; {state}")
    if res.rejected:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(res.rejected.items()))
        print(f"engram-stream forget: refused: {reasons}" + (f" ({res.message})" if res.message else ""),
              file=sys.stderr)
    return ok
