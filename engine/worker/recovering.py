"""Heartbeats while a worker rebuilds its shards, so that recovery is never taken for a hang.

Loading one large snapshot file is a single call into hnswlib (about 7 ms
per MiB measured: 30 s is some 4.5 GB), during which the worker's loop
cannot beat. Without help, a slot whose recovery outlasts
``--worker-timeout`` would be killed as hung at every start and never come
up. ``Recovering`` beats from a thread for as long as recovery runs and
publishes ``LiveRecord.recovering`` and ``recovery_progress`` (which
``engram-stream status`` shows). A stopped (SIGSTOP) or dead worker stops
all its threads, so the watchdog still sees a real hang.

The thread ends, and is joined, before the worker's loop starts: the worker
forks its snapshot children later and must not fork while a thread exists
(STYLE §3).
"""

from __future__ import annotations

import threading
import time

BEAT_S = 0.25


class Recovering:
    def __init__(self, live, clock=time.monotonic):
        self.live = live
        self.clock = clock
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="engram-recovery-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(BEAT_S):
            self.live.heartbeat = self.clock()

    def progress(self, share: float) -> None:
        self.live.recovery_progress = share

    def __enter__(self) -> "Recovering":
        self.live.recovery_progress = 0.0
        self.live.recovering = 1
        self.live.heartbeat = self.clock()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.live.recovering = 0
