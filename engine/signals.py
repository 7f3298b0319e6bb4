"""Signals for a main loop: handlers only enqueue; the loop waits on a pipe.

``SignalQueue.install`` routes the given signals to a handler that appends
the signal number to ``pending`` and nothing else (STYLE §2), and points
``signal.set_wakeup_fd`` at a non-blocking pipe, so ``wait(timeout)``
returns as soon as a signal arrives instead of sleeping out its timeout.
``fds`` are the pipe's descriptors, which forked children must close.
Shared by every process with a main loop (supervisor, gateway, exporter).
"""

from __future__ import annotations

import os
import select
import signal
import time


class SignalQueue:
    def __init__(self):
        self.pending: list[int] = []
        self._pipe: tuple[int, int] | None = None
        self._old: dict[int, object] = {}

    @property
    def fds(self) -> tuple[int, ...]:
        return self._pipe or ()

    def install(self, signals) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)
        signal.set_wakeup_fd(w)
        for sig in signals:
            self._old[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.pending.append(signum)

    def pop(self) -> int | None:
        return self.pending.pop(0) if self.pending else None

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``, less if a signal arrives."""
        if self._pipe is None:
            time.sleep(timeout)  # nothing installed: still a wait, never a spin
            return
        try:
            ready, _, _ = select.select([self._pipe[0]], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self._pipe[0], 4096):
                    pass
            except BlockingIOError:
                pass

    def uninstall(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
        if self._pipe is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
