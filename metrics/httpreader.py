"""The reader thread of ``metrics.httpserve``: connections in, complete request heads out.

One thread accepts every connection and reads the request heads (request
line and headers) of all of them at once through a selector, never blocking
on one client. A connection waiting here costs a socket and a buffer of at
most ``max_head`` bytes, no thread. Each ends in one of these ways:

* its head completes → ``dispatch(Request)`` (the server queues it on a lane);
* it sends nothing for ``idle_timeout`` s, or its head is not complete
  ``header_timeout`` s after accept → closed (408 if it had sent something);
* its head grows past ``max_head`` bytes → 431;
* ``max_pending`` others wait and one more arrives → the *oldest* is
  closed with 503. Real clients send their head at once, so only slow ones
  grow old: a storm of them cannot keep a health probe out;
* the client closes or resets first → closed, nothing to answer.

Single-threaded by design: only the reader thread touches ``_pending`` and
the selector (``pending`` is read elsewhere as a rough gauge). Every close
but the client's own is reported through ``reject`` *before* the answer is
sent, so whoever sees the answer also sees the count.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import threading
from typing import Callable

from metrics.httplanes import Limits, Request, answer, canned, close_quietly
from metrics.ratelog import RateLog

TICK = 0.1            # seconds between deadline sweeps; deadlines are seconds long
_ACCEPT_BURST = 64    # accepts per wake-up, so reads are not starved by a connect storm
_READ_CHUNK = 4096


class _Pending:
    """A connection still sending its head."""

    __slots__ = ("sock", "peer", "buf", "accepted", "last", "line_done")

    def __init__(self, sock: socket.socket, peer, now: float):
        self.sock, self.peer, self.accepted, self.last = sock, peer, now, now
        self.buf = bytearray()
        self.line_done = False


class HeadReader:
    """Accepts on ``listener`` (non-blocking, listening) and reads heads until ``stopping``."""

    def __init__(self, listener: socket.socket, limits: Limits, dispatch: Callable[[Request], None],
                 reject: Callable[[str, object, str], None], client_error: Callable[[OSError, object], None],
                 ratelog: RateLog, clock: Callable[[], float]):
        self.listener, self.limits, self.ratelog, self.clock = listener, limits, ratelog, clock
        self._dispatch, self._reject, self._client_error = dispatch, reject, client_error
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        #: 503 for a connection dropped for want of room (the server reuses it for full lanes).
        self.busy = canned(503, {"error": "overloaded, retry later"},
                            {"Retry-After": str(limits.retry_after)})
        self._late = canned(408, {"error": f"request head not received within {limits.header_timeout:g} s"})
        self._large = canned(431, {"error": f"request head larger than {limits.max_head} bytes"})
        self._sel: selectors.BaseSelector | None = None
        self._accept_paused_until = 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def run(self, stopping: threading.Event) -> None:
        """The reader thread's body; closes every pending connection on the way out."""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        next_sweep = 0.0
        try:
            while not stopping.is_set():
                try:
                    for key, _ in self._sel.select(TICK):
                        if key.data is None:
                            self._accept()
                        else:
                            self._read(key.data)
                    now = self.clock()
                    if now >= next_sweep:
                        self._expire(now)
                        next_sweep = now + TICK
                except Exception:  # a bug here must not stop the server
                    self.ratelog.note("server_error", "reader loop failed", exc_info=True)
        finally:
            for p in list(self._pending.values()):
                self._forget(p)
                close_quietly(p.sock)
            self._sel.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                sock, peer = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_descriptors(exc)
                return  # otherwise (ECONNABORTED …) the client left before we accepted
            sock.setblocking(False)
            if len(self._pending) >= self.limits.max_pending:
                self._evict_oldest()
            p = _Pending(sock, peer, self.clock())
            self._pending[sock.fileno()] = p
            self._sel.register(sock, selectors.EVENT_READ, p)

    def _out_of_descriptors(self, exc: OSError) -> None:
        self.ratelog.note("accept_failed", "%s (%d connections pending)", exc.strerror, len(self._pending))
        if self._pending:
            self._evict_oldest()
        else:
            # The listener stays readable: stop polling it for a tick rather than spin.
            self._sel.unregister(self.listener)
            self._accept_paused_until = self.clock() + TICK

    def _evict_oldest(self) -> None:
        _, p = self._pending.popitem(last=False)
        self._sel.unregister(p.sock)
        self._reject("evicted", p.peer, f"{self.limits.max_pending} connections pending, dropped the oldest")
        answer(p.sock, self.busy)

    def _read(self, p: _Pending) -> None:
        try:
            data = p.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._forget(p)
            close_quietly(p.sock)
            self._client_error(exc, p.peer)
            return
        if not data:  # the client gave up before sending a request: nothing to answer
            self._forget(p)
            close_quietly(p.sock)
            return
        # Search only the new bytes (and 3 before them): a client sending one
        # byte at a time must not cost a rescan of its whole buffer each time.
        start = max(0, len(p.buf) - 3)
        p.buf += data
        p.last = self.clock()
        end = _head_end(p, start)
        if end < 0 and len(p.buf) <= self.limits.max_head:
            return
        self._forget(p)
        if end < 0 or end > self.limits.max_head:
            self._reject("bad_request", p.peer, f"request head over {self.limits.max_head} bytes")
            answer(p.sock, self._large)
            return
        self._dispatch(Request(p.sock, p.peer, bytes(p.buf), p.accepted))

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self.listener, selectors.EVENT_READ, None)
        lim = self.limits
        for p in list(self._pending.values()):
            if now - p.last >= lim.idle_timeout:
                why = f"nothing received for {lim.idle_timeout:g} s"
            elif now - p.accepted >= lim.header_timeout:
                why = f"request head not complete after {lim.header_timeout:g} s"
            else:
                continue
            self._forget(p)
            self._reject("timeout", p.peer, why)
            if p.buf:
                answer(p.sock, self._late)
            else:
                close_quietly(p.sock)

    def _forget(self, p: _Pending) -> None:
        self._pending.pop(p.sock.fileno(), None)
        self._sel.unregister(p.sock)


def _head_end(p: _Pending, start: int) -> int:
    """Offset just past the request head in ``p.buf``, or -1 while incomplete."""
    buf = p.buf
    if not p.line_done:
        nl = buf.find(b"\n", start)
        if nl >= 0:
            p.line_done = True
            if len(buf[:nl].split()) < 3:
                return nl + 1  # HTTP/0.9 or garbage: no headers follow; the handler answers
    for sep in (b"\r\n\r\n", b"\n\n"):  # bare LF is tolerated, as http.server does
        i = buf.find(sep, start)
        if i >= 0:
            return i + len(sep)
    return -1
