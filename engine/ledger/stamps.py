"""Stamps: the order of operations on one key, across processes and restarts.

A stamp is ``time.monotonic_ns()`` plus the instance's ``stamp_offset``
(control header). CLOCK_MONOTONIC is one clock for every process of a host,
so an operation stamped after another was acknowledged gets a larger stamp,
whichever process stamps it. Operations that overlap in time may get either
order; both are correct answers for concurrent calls.

Across restarts of one boot the monotonic clock keeps counting, so the
offset stays as it was. After a reboot it starts again near zero: the
supervisor then raises the offset above every stamp the previous boot can
have handed out. It keeps a ceiling on disk (``<data-dir>/stamps.json``:
boot id, offset, ceiling), moved ``AHEAD_NS`` past the present whenever the
present comes within ``AHEAD_NS / 2`` of it. Producers hold to it
(``StampClock.blocked``): they refuse writes rather than take a stamp
within ``MARGIN_NS`` of the ceiling they last read, so no stamp ever passes
the ceiling on disk, even while the supervisor is stopped (SIGSTOP, a
debugger): after at least ``AHEAD_NS / 2`` of that (30 min), writes are
refused until it runs again. The bound read from disk is kept until the clock reaches it, so the
file is read about once per ``AHEAD_NS / 2``.
"""

from __future__ import annotations

import json
import os
import threading
import time

from engine.fsutil import atomic_write

FILE = "stamps.json"
AHEAD_NS = 3600 * 10**9  # a later stamp costs nothing: u64 nanoseconds last 584 years
MARGIN_NS = 10**9        # a producer refuses writes this close to the ceiling


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _read(path: str) -> dict:
    try:
        with open(path) as fh:
            raw = json.load(fh)
        return raw if isinstance(raw, dict) else {}
    except (OSError, ValueError):
        return {}


class Ceiling:
    """The supervisor's side: the offset for this run, and the ceiling on disk."""

    def __init__(self, data_dir: str, clock_ns=time.monotonic_ns, boot: str | None = None):
        self.path = os.path.join(data_dir, FILE)
        self.clock_ns = clock_ns
        saved = _read(self.path)
        boot = boot_id() if boot is None else boot
        offset = int(saved.get("offset", 0) or 0)
        ceiling = int(saved.get("ceiling", 0) or 0)
        if saved.get("boot") != boot:
            # A new boot (or no file): start above every stamp handed out before.
            offset = max(0, ceiling - clock_ns() + 1)
        self.boot, self.offset, self.ceiling = boot, offset, ceiling

    def now(self) -> int:
        return self.clock_ns() + self.offset

    def keep(self) -> bool:
        """Move the ceiling ahead when the present nears it; True if written."""
        if self.now() + AHEAD_NS // 2 < self.ceiling:
            return False
        self.ceiling = self.now() + AHEAD_NS
        body = json.dumps({"boot": self.boot, "offset": self.offset, "ceiling": self.ceiling}).encode()
        atomic_write(self.path, body)
        return True


class StampClock:
    """A process's stamps: strictly increasing within the process, so two
    calls of one producer never share a stamp. ``ceiling_path``: the
    supervisor's ``stamps.json``, held to by ``blocked``."""

    def __init__(self, offset: int, clock_ns=time.monotonic_ns, ceiling_path: str | None = None):
        self.offset = offset
        self.clock_ns = clock_ns
        self.last = 0
        self._guard = threading.Lock()
        self.path = ceiling_path
        self.bound = 0  # the ceiling last read from disk

    def blocked(self) -> str:
        """'' while a stamp taken now stays below the ceiling on disk; else why
        writes must wait. A data directory without the file (no supervisor
        made it: an in-process test) has no ceiling to hold to."""
        if self.path is None:
            return ""
        soon = self.clock_ns() + self.offset + MARGIN_NS
        if soon < self.bound:
            return ""
        saved = _read(self.path)
        if not saved:
            return ""
        self.bound = int(saved.get("ceiling", 0) or 0)
        if soon < self.bound:
            return ""
        return (f"stamps would pass the ceiling in {self.path}, which the supervisor moves ahead every "
                f"{AHEAD_NS // 2 // 60 // 10**9} min (is it stopped?); writes are refused until it does")

    def take(self) -> int:
        with self._guard:
            self.last = max(self.clock_ns() + self.offset, self.last + 1)
            return self.last
