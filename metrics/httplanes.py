"""What ``metrics.httpserve`` does with a request once its head is read.

* ``Limits`` — every bound of the server, validated once.
* ``Request`` — a connection and its complete request head.
* ``Lane`` — a bounded queue of requests and the fixed threads that serve it.
* ``HeadHandler`` — ``BaseHTTPRequestHandler`` over a head already read, so
  the stdlib still parses the request line and headers and writes the
  response, but never reads from a slow client.
* ``canned``, ``answer`` — a short complete response, sent without waiting.
"""

from __future__ import annotations

import io
import json
import queue
import socket
import threading
from dataclasses import dataclass, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Callable


@dataclass(frozen=True)
class Limits:
    """Bounds of the exporter's HTTP server (docs/operations.md, "Exporter limits")."""

    workers: int = 4              # threads serving /metrics (and every non-health path)
    queue: int = 32               # complete requests waiting for those threads; beyond: 503
    health_workers: int = 1       # threads serving /health/* and /api/v1/system/health
    health_queue: int = 16        # health requests waiting; beyond: 503
    max_pending: int = 512        # connections still sending their head; beyond: oldest evicted
    idle_timeout: float = 3.0     # seconds a connection may send nothing before its head is complete
    header_timeout: float = 5.0   # seconds from accept to the end of the head
    write_timeout: float = 5.0    # seconds a blocked response write may wait for the client
    backlog: int = 1024           # listen backlog (the kernel caps it at net.core.somaxconn)
    retry_after: int = 1          # seconds, in the Retry-After header of a 503
    max_head: int = 8192          # bytes of request line plus headers
    log_interval: float = 30.0    # seconds between two log lines of one kind of client error

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                low = 0 if f.name == "retry_after" else 1
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    raise ValueError(f"exporter limit {f.name} must be an integer >= {low}, got {value!r}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"exporter limit {f.name} must be a number of seconds > 0, got {value!r}")


class Request:
    """A connection whose request head has been read in full."""

    __slots__ = ("sock", "peer", "head", "accepted")

    def __init__(self, sock: socket.socket, peer, head: bytes, accepted: float):
        self.sock, self.peer, self.head, self.accepted = sock, peer, head, accepted


class Lane:
    """A bounded queue of requests served by ``threads`` threads calling ``serve``."""

    def __init__(self, name: str, threads: int, size: int, serve: Callable[[Request], None]):
        self.name, self.threads, self.size = name, threads, size
        self._queue: queue.Queue = queue.Queue(size)
        self._serve = serve
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"metrics-http-{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def offer(self, req: Request) -> bool:
        """Queue ``req``; False when the queue is full (the caller answers 503)."""
        try:
            self._queue.put_nowait(req)
            return True
        except queue.Full:
            return False

    def queued(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float) -> None:
        """Close the requests still queued, then stop and join the threads.

        Call once nothing offers any more. A thread blocked writing to a slow
        client ends within the write timeout, hence ``timeout``.
        """
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                close_quietly(req.sock)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def _run(self) -> None:
        while (req := self._queue.get()) is not None:
            self._serve(req)


class HeadHandler(BaseHTTPRequestHandler):
    """Runs over ``request``, a ``Request``; the server must offer ``client_error`` and ``reject``."""

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.head)
        self.wfile = _SocketWriter(self.connection)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Only the stdlib's parsing calls this (malformed request line or
        # headers, unknown method): the client's fault, counted as such.
        self.server.reject("bad_request", self.client_address, f"{code} {message or ''}".strip())
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        pass  # no line per request: a scrape every few seconds would flood the log

    def log_error(self, format: str, *args) -> None:  # noqa: A002
        # The stdlib catches a write timeout itself and reports it only here;
        # send_error's own call is already counted above.
        if format.startswith("Request timed out"):
            self.server.client_error(TimeoutError(f"response not read within "
                                                  f"{self.server.limits.write_timeout:g} s"),
                                     self.client_address)


class _SocketWriter(io.BufferedIOBase):
    """Whole writes with ``sendall``: a short ``send`` must never drop bytes."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._sock.sendall(b)
        return memoryview(b).nbytes


def canned(code: int, body: dict, headers: dict | None = None) -> bytes:
    """A complete HTTP/1.0 response with a JSON body, closing the connection."""
    data = (json.dumps(body, sort_keys=True) + "\n").encode()
    lines = [f"HTTP/1.0 {code} {HTTPStatus(code).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", "Cache-Control: no-store", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def answer(sock: socket.socket, response: bytes) -> None:
    """Send a short canned response without waiting for the client, then close."""
    try:
        sock.send(response)  # a few hundred bytes: fits in a fresh socket's send buffer
    except OSError:
        pass  # the client is gone or not reading: it loses only this answer
    close_quietly(sock)


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
