#!/usr/bin/env python3
"""Print the /dev/shm bytes an engine with a given configuration needs.

Takes the settings of ``engram-stream run`` from the same sources, with the
same precedence (flags > ``ENGRAM_<FLAG>`` > ``--config`` TOML > defaults),
and prints the figure the supervisor's start-up check
(``engine.supervisor.preflight.check_shm_room``) compares with the free space
of /dev/shm::

    scripts/shm_size.py --config engram.toml          # bytes, e.g. 508753408
    scripts/shm_size.py --workers 4 --dim 768 --suggest   # e.g. 640Mi

``--suggest`` prints a size with headroom for ``docker run --shm-size``,
compose's ``shm_size`` and a Kubernetes ``emptyDir`` ``sizeLimit``: the
figure plus 25 % (semaphores, page rounding, a later change of settings),
rounded up to a multiple of 64 MiB, written as ``<N>Mi`` (Kubernetes; Docker
reads the same number as ``<N>m``). tmpfs allocates pages when they are first
written, so the headroom costs no memory until it is used.

With ``--workers auto`` the worker count depends on the CPUs this process may
use, so the figure is that of *this* host; pass ``--workers`` to size another.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import config  # noqa: E402
from engine.control.layouts import required_bytes  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from engine.supervisor.preflight import instance_params, plan_cpus  # noqa: E402

HEADROOM = 0.25
STEP = 64 * 2**20


def suggested_bytes(need: int) -> int:
    """The figure plus HEADROOM, rounded up to a multiple of STEP."""
    return math.ceil(need * (1 + HEADROOM) / STEP) * STEP


def needed_bytes(cfg) -> int:
    slots, cpus = plan_cpus(cfg)
    return required_bytes(instance_params(cfg, slots, cpus))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shm_size.py", description=__doc__.split("\n\n")[0])
    config.add_arguments(parser, "run")
    parser.add_argument("--suggest", action="store_true",
                        help="Print a size with headroom (<N>Mi) instead of the exact bytes.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.resolve(args, "run")
        need = needed_bytes(cfg)
    except ConfigError as exc:
        print(f"shm_size.py: {exc}", file=sys.stderr)
        return 2
    if cfg.workers == "auto":
        print(f"shm_size.py: --workers auto is {plan_cpus(cfg)[0]} on this host; pass --workers "
              f"to size a machine with other CPUs", file=sys.stderr)
    print(f"{suggested_bytes(need) // 2**20}Mi" if args.suggest else need)
    return 0


if __name__ == "__main__":
    sys.exit(main())
