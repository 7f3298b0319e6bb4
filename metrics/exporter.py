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
* extra JSON routes the engine injects (``routes``: path → ``fn() -> (status
  code, object)``), e.g. ``/health/recall`` and ``/api/v1/system/config``;
  if ``fn`` raises, 500 naming the error.
* anything else — 404 JSON; other methods — 405 JSON.

``health`` is injected (the engine knows what "ready" means); if it raises,
live/ready answer 503 and the system endpoint 500, each naming the error.
Requests are not logged (a scrape every few seconds would flood stderr);
handler errors go to the ``logging`` module.

Connections are bounded (``metrics.httpserve``): a fixed pool of threads per
lane, bounded queues answered 503 + ``Retry-After`` when full, deadlines on
every client. The health paths have their own lane, so a liveness probe
never queues behind scrapes. ``Limits`` sets the bounds;
``on_reject(reason)`` hears of every connection closed unserved.

Threads: ``start`` starts one reader thread and the lane threads. Start the
server only after any fork (STYLE §3).
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
from typing import Callable
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from metrics.httplanes import HeadHandler, Limits
from metrics.httpserve import REJECT_REASONS, BoundedHTTPServer

__all__ = ["Limits", "MetricsServer", "REJECT_REASONS", "parse_addr", "serve"]

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


class MetricsServer(BoundedHTTPServer):
    """The exporter's HTTP server. ``port``/``url`` say where it listens."""

    def __init__(self, addr: str, registry: CollectorRegistry, health: Health,
                 limits: Limits | None = None, on_reject: Callable[[str], None] | None = None,
                 routes: dict[str, Callable[[], tuple[int, dict]]] | None = None):
        host, port = parse_addr(addr)
        self.registry = registry
        self.health = health
        self.routes = dict(routes or {})
        super().__init__((host, port), _Handler, limits, lane_of=_lane_of, on_reject=on_reject,
                         family=socket.AF_INET6 if ":" in host else socket.AF_INET)


def serve(addr: str, collector, health: Health, limits: Limits | None = None,
          on_reject: Callable[[str], None] | None = None,
          routes: dict[str, Callable[[], tuple[int, dict]]] | None = None) -> MetricsServer:
    """Serve ``collector`` (in a fresh registry), ``health`` and ``routes`` on ``addr``."""
    registry = CollectorRegistry()
    registry.register(collector)
    return MetricsServer(addr, registry, health, limits, on_reject, routes).start()


class _Handler(HeadHandler):
    server: MetricsServer
    server_version = "engram-exporter/1"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        extra = self.server.routes.get(path.rstrip("/") or "/")
        if extra is not None:
            self._extra(extra)
            return
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

    def _extra(self, fn) -> None:
        try:
            code, obj = fn()
        except Exception as exc:
            log.exception("route %s failed", self.path)
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._json(code, obj)

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


_ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/metrics": _Handler._metrics,
    "/health/live": _Handler._live,
    "/health/ready": _Handler._ready,
    "/api/v1/system/health": _Handler._system_health,
}

#: Served on their own lane: an orchestrator's probe must not queue behind scrapes.
_HEALTH_PATHS = frozenset({"/health/live", "/health/ready", "/api/v1/system/health", "/health/recall"})


def _lane_of(path: str) -> str:
    return "health" if (path.rstrip("/") or "/") in _HEALTH_PATHS else "main"
