"""The exporter's HTTP server: /metrics and the health endpoints (DESIGN §7).

Routes (GET; HEAD answers the same without a body):

* ``/metrics`` — the registry through prometheus_client's exposition; the
  format is negotiated from ``Accept`` (``choose_encoder``: Prometheus text
  0.0.4, or OpenMetrics when asked for), gzip when ``Accept-Encoding`` allows.
* ``/health/live`` — 200 ``{"status": "ok"}`` while ``health()["live"]``,
  else 503 with the reason.
* ``/health/ready`` — 200 ``{"status": "ready"}`` while ``health()["ready"]``,
  else 503 ``{"status": "not_ready", "reason": …}``.
* ``/api/v1/system/health`` — 200 with ``health()`` as JSON: ``live``,
  ``ready``, ``reason``, and ``components: {name: {status, reason, since}}``.
* anything else — 404 JSON; other methods — 405 JSON.

``health`` is injected (the engine knows what "ready" means); if it raises,
live/ready answer 503 and the system endpoint 500, each naming the error.
Requests are not logged (a scrape every few seconds would flood stderr);
handler errors go to the ``logging`` module.

Threads: ``serve`` starts ``serve_forever`` on one thread and handles each
request on its own daemon thread. Start the server only after any fork
(STYLE §3).
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

Health = Callable[[], dict]


def parse_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); port 0 = any free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad listen address {addr!r}: expected host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"bad listen address {addr!r}: no host (use 0.0.0.0 to listen on all)")
    return host, int(port)


class MetricsServer(ThreadingHTTPServer):
    """The exporter's HTTP server. ``port``/``url`` say where it listens."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: str, registry: CollectorRegistry, health: Health):
        host, port = parse_addr(addr)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.health = health
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="metrics-http",
                                        daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving, close the socket and join the serving thread (idempotent)."""
        if self._thread is not None:
            super().shutdown()  # only valid while serve_forever runs
            self._thread.join()
            self._thread = None
        self.server_close()


def serve(addr: str, collector, health: Health) -> MetricsServer:
    """Serve ``collector`` (in a fresh registry) and ``health`` on ``addr``."""
    registry = CollectorRegistry()
    registry.register(collector)
    return MetricsServer(addr, registry, health).start()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    server_version = "engram-exporter/1"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        route = _ROUTES.get(path.rstrip("/") or "/")
        if route is None:
            self._json(404, {"error": "not found", "path": path})
            return
        route(self)

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _not_allowed(self) -> None:
        self._json(405, {"error": f"method {self.command} not allowed"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    # -- routes ---------------------------------------------------------------
    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.registry)
        except Exception as exc:
            log.exception("scrape failed")
            self._send(500, "text/plain; charset=utf-8", f"scrape failed: {exc}\n".encode())
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, content_type, body, headers)

    def _call_health(self) -> tuple[dict | None, str]:
        try:
            h = self.server.health()
            if not isinstance(h, dict):
                raise TypeError(f"health() returned {type(h).__name__}, not dict")
            return h, ""
        except Exception as exc:
            log.exception("health() failed")
            return None, f"health check failed: {type(exc).__name__}: {exc}"

    def _live(self) -> None:
        h, err = self._call_health()
        if h is not None and h.get("live"):
            self._json(200, {"status": "ok"})
        else:
            self._json(503, {"status": "down", "reason": err or h.get("reason", "")})

    def _ready(self) -> None:
        h, err = self._call_health()
        if h is not None and h.get("ready"):
            self._json(200, {"status": "ready"})
        else:
            self._json(503, {"status": "not_ready", "reason": err or h.get("reason", "")})

    def _system_health(self) -> None:
        h, err = self._call_health()
        if h is None:
            self._json(500, {"error": err})
        else:
            self._json(200, h)

    # -- plumbing -------------------------------------------------------------
    def _json(self, code: int, obj) -> None:
        body = (json.dumps(obj, default=str, sort_keys=True) + "\n").encode()
        self._send(code, "application/json", body)

    def _send(self, code: int, content_type: str, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        pass  # quiet: no line per request on stderr

    def log_error(self, format: str, *args) -> None:  # noqa: A002
        log.debug("http: " + format, *args)


_ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/metrics": _Handler._metrics,
    "/health/live": _Handler._live,
    "/health/ready": _Handler._ready,
    "/api/v1/system/health": _Handler._system_health,
}
