"""A bounded HTTP/1.0 server: fixed threads, bounded queues, deadlines on every client.

Why not ``ThreadingHTTPServer``: it starts a thread per connection and reads
without a timeout, with a listen backlog of 5. 3,000 connections that sent
nothing held 3,002 threads and 2.3 GB, and most real scrapes beside them were
reset or hung. Here the cost of a connection that sends nothing is a socket
and a small buffer, for a few seconds at most::

    listener ──accept──► reader thread ──complete head──► lane "main":   queue ─► threads ─┐
    (backlog)            one selector over                lane "health": queue ─► threads ─┤
                         every pending connection                                          ▼
                           (metrics.httpreader:             503 + Retry-After      handler_class
                            deadlines, 408, 431,            when the lane's        writes the response
                            oldest evicted with 503)        queue is full          (write_timeout)

* ``HeadReader`` (``metrics.httpreader``) turns connections into complete
  request heads within deadlines, on one thread.
* A complete head goes to the lane ``lane_of(path)`` names. Each lane is a
  bounded queue and a fixed number of threads (``metrics.httplanes.Lane``);
  a full queue is answered 503 at once by the reader thread, so the health
  lane keeps answering while the main one is saturated.
* ``handler_class`` (a ``HeadHandler``) runs on a lane thread over the head
  already read. One request per connection, as ``BaseHTTPRequestHandler``
  does under HTTP/1.0.

Client errors (resets, broken pipes, timeouts, bad requests) are log lines
through ``RateLog``, never tracebacks. Connections closed unserved are
counted by reason (``REJECT_REASONS``) and passed to ``on_reject``; calls are
serialised, so the callback may record into a single-writer metric row.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

from metrics.httplanes import Lane, Limits, Request, answer, close_quietly
from metrics.httpreader import HeadReader
from metrics.ratelog import RateLog

log = logging.getLogger(__name__)

#: Why a connection was closed without being served.
REJECT_REASONS = ("queue_full", "timeout", "bad_request", "evicted")


class BoundedHTTPServer:
    """Listens on ``addr`` at construction; ``start`` serves, ``shutdown`` stops (idempotent)."""

    def __init__(self, addr: tuple, handler_class, limits: Limits | None = None,
                 lane_of: Callable[[str], str] | None = None,
                 on_reject: Callable[[str], None] | None = None,
                 family: int = socket.AF_INET, clock: Callable[[], float] = time.monotonic):
        self.limits = limits = limits or Limits()
        self.handler_class = handler_class
        self.lane_of = lane_of or (lambda path: "main")
        self.ratelog = RateLog(log, limits.log_interval)
        self._on_reject = on_reject
        self._reject_lock = threading.Lock()
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._lanes = {"main": Lane("main", limits.workers, limits.queue, self._serve),
                       "health": Lane("health", limits.health_workers, limits.health_queue, self._serve)}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restarted exporter must rebind while old connections sit in TIME_WAIT.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(addr)
            self.socket.listen(limits.backlog)  # the kernel caps it at net.core.somaxconn
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._reader = HeadReader(self.socket, limits, self._dispatch, self.reject, self.client_error,
                                  self.ratelog, clock)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def load(self) -> dict[str, int]:
        """Connections still sending their head (``pending``) and requests queued per lane."""
        return {"pending": self._reader.pending, **{n: lane.queued() for n, lane in self._lanes.items()}}

    def rejected(self) -> dict[str, int]:
        """Connections closed unserved since start, by reason."""
        with self._reject_lock:
            return dict(self._rejected)

    # -- life cycle -----------------------------------------------------------
    def start(self):
        if self._thread is None:
            for lane in self._lanes.values():
                lane.start()
            self._thread = threading.Thread(target=self._reader.run, args=(self._stopping,),
                                            name="metrics-http-reader", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, close waiting connections, join every thread, close the socket."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None
            for lane in self._lanes.values():
                lane.stop(self.limits.write_timeout + 1.0)
            self.ratelog.flush()
        self.server_close()

    def server_close(self) -> None:
        close_quietly(self.socket)

    # -- requests -------------------------------------------------------------
    def _dispatch(self, req: Request) -> None:
        """On the reader thread: queue a complete request on its lane, or answer 503."""
        lane = self._lanes.get(self.lane_of(_path_of(req.head)), self._lanes["main"])
        if not lane.offer(req):
            self.reject("queue_full", req.peer, f"{lane.size} requests already wait on the {lane.name} lane")
            answer(req.sock, self._reader.busy)

    def _serve(self, req: Request) -> None:
        """On a lane thread: run the handler over the head, write its response, close."""
        try:
            req.sock.settimeout(self.limits.write_timeout)
            self.handler_class(req, req.peer, self)
        except OSError as exc:
            self.client_error(exc, req.peer)
        except Exception:  # a handler bug: worth its traceback, still rate-limited
            self.ratelog.note("handler_error", "request from %s failed", _peer(req.peer), exc_info=True)
        finally:
            close_quietly(req.sock)

    # -- accounting -----------------------------------------------------------
    def reject(self, reason: str, peer, detail: str) -> None:
        """Count a connection closed unserved, tell ``on_reject``, log (rate-limited)."""
        with self._reject_lock:
            self._rejected[reason] += 1
            if self._on_reject is not None:
                try:
                    self._on_reject(reason)
                except Exception:
                    self.ratelog.note("on_reject_failed", "callback failed", exc_info=True)
        self.ratelog.note(reason, "%s: %s", _peer(peer), detail)

    def client_error(self, exc: OSError, peer) -> None:
        """A client that went away or stalled mid-response: one rate-limited line, no traceback."""
        self.ratelog.note(_error_kind(exc), "%s: %s", _peer(peer), exc.strerror or exc)


def _path_of(head: bytes) -> str:
    words = head.split(b"\n", 1)[0].split()
    try:
        return urlsplit(words[1].decode("latin-1")).path if len(words) >= 2 else ""
    except ValueError:
        return ""


def _error_kind(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return "connection_reset"
    return "socket_error"


def _peer(peer) -> str:
    if not (isinstance(peer, tuple) and len(peer) >= 2):
        return str(peer)
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
