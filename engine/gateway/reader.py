"""A call's request iterator, read on its own thread into a bounded queue.

gRPC hands a streaming handler a blocking iterator; reading it on the
handler's own thread would leave the handler deaf to everything but the
client. With the reader apart, an ``ObserveStream`` handler can wake every
``POLL_S`` to push a status while the client is silent.
"""

from __future__ import annotations

import queue
import threading

POLL_S = 0.1               # how often a silent stream checks for a status to push

END = object()


class Reader:
    """Moves a call's request iterator into a bounded queue, on its own thread
    (bounded: a client cannot make the gateway buffer more than a few messages)."""

    def __init__(self, requests):
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self._stopped = threading.Event()
        self._t = threading.Thread(target=self._run, args=(requests,), daemon=True,
                                   name="engram-gateway-reader")
        self._t.start()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self.q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, requests) -> None:
        try:
            for msg in requests:
                if not self._put(msg):
                    return
        except Exception:  # the client went away: a cancelled call raises here
            pass
        self._put(END)

    def get(self, timeout: float):
        """The next message, END when the client is done, None on timeout."""
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        self._stopped.set()
