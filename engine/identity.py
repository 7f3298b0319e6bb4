"""Who this process is: its title in ps/top/htop, and the role in its log records.

Every process of an instance runs ``python -m engine run ...`` (children are
forks), so without titles ``ps`` shows the same command line N+3 times and
an operator cannot tell which pid is the gateway. ``become`` names the
process (``setproctitle`` rewrites the argv area that /proc/<pid>/cmdline
shows) and records the role and slot that ``engine.logfmt`` puts in every
JSON log line. ``title`` is the one place the names are spelled, so
``engram-stream status`` shows exactly what ps shows.

State is per process: a forked child starts with its parent's values and
calls ``become`` first thing.
"""

from __future__ import annotations

import setproctitle

ROLE = "cli"
SLOT: int | None = None


def title(role: str, name: str, slot: int | None = None, cpu: int | None = None, port: int | None = None) -> str:
    """``engram: worker 3 cpu 3 [NAME]``, ``engram: gateway :50051 [NAME]``, ..."""
    parts = ["engram:", role]
    if slot is not None:
        parts.append(str(slot))
    if cpu is not None and cpu >= 0:
        parts += ["cpu", str(cpu)]
    if port:
        parts.append(f":{port}")
    parts.append(f"[{name}]")
    return " ".join(parts)


def become(role: str, name: str, slot: int | None = None, cpu: int | None = None,
           port: int | None = None) -> str:
    """Set this process's role (for logs) and title; returns the title.

    Call it before the process starts threads where possible: the first
    title change moves the environment block, which a concurrent getenv in
    another thread could be reading."""
    global ROLE, SLOT
    ROLE, SLOT = role, slot
    text = title(role, name, slot, cpu, port)
    setproctitle.setproctitle(text)
    return text
