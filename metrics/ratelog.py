"""Rate-limited log lines, one budget per kind of event.

A misbehaving or merely impatient client population can produce thousands of
identical events a second (resets, broken pipes, timeouts). One line per
event drowned the exporter's log in an earlier overload test (69,193 lines
for 3,000 connections), hiding the lines that matter. ``RateLog`` lets
through the first event of each kind, then at most one line per kind per
``interval`` seconds; the next line of a kind says how many were held back
in between, so the counts stay honest. ``flush`` reports what is still held
back (at shutdown).

Thread-safe: any thread may call ``note``. The clock is injectable so tests
need not wait ``interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable


class RateLog:
    """At most one ``logger.warning`` line per kind per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not interval > 0:
            raise ValueError(f"log interval must be > 0 seconds, got {interval!r}")
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def note(self, kind: str, msg: str, *args, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``kind`` was logged less than ``interval`` ago.

        Returns whether a line was written. ``exc_info`` is for server bugs
        only: client behaviour never earns a traceback.
        """
        with self._lock:
            now = self.clock()
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        self.logger.warning("%s: " + msg + "%s", kind, *args, self._suffix(held), exc_info=exc_info)
        return True

    def held(self) -> dict[str, int]:
        """Events held back since the last line of their kind."""
        with self._lock:
            return dict(self._held)

    def flush(self) -> None:
        """One line per kind that still has held-back events."""
        with self._lock:
            held, self._held = self._held, {}
        for kind, n in sorted(held.items()):
            self.logger.warning("%s: %d more since the last report", kind, n)

    def _suffix(self, held: int) -> str:
        if not held:
            return ""
        return f" ({held} more since the last report)"
