"""The exporter's connection limits: fixed threads, bounded queues, deadlines, quiet logs.

In-process tests give the server small limits and a collector that blocks on
demand, and check each bound alone. ``test_storm_*`` runs the server with its
default limits in a process of its own and measures its threads, memory,
descriptors and log from outside (psutil), while slow connections, real
scrapes, clients that reset, and a liveness probe hit it at once. Everything
is on 127.0.0.1; every wait polls a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from prometheus_client.metrics_core import GaugeMetricFamily

from tests.harness import wait_for
from metrics.array import MetricArray
from metrics.collector import ArrayCollector
from metrics.exporter import Limits, MetricsServer, serve
from metrics.ratelog import RateLog

ROOT = Path(__file__).resolve().parents[2]
HEALTHY = {"live": True, "ready": True, "reason": "", "components": {}}
REQ = b"GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"


class GatedCollector:
    """A collector whose scrapes wait until the test opens the gate (10 s at most)."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            self.entered += 1
        self.gate.wait(10)
        yield GaugeMetricFamily("gated_up", "1 once the gate opened", value=1)


@pytest.fixture
def make_server():
    servers = []

    def make(collector=None, **limits):
        rejects = []
        collector = collector or ArrayCollector(MetricArray.in_memory(1, 1))
        server = serve("127.0.0.1:0", collector, lambda: HEALTHY, Limits(**limits), rejects.append)
        servers.append((server, collector))
        return server, rejects

    yield make
    for server, collector in servers:
        if isinstance(collector, GatedCollector):
            collector.gate.set()
        server.shutdown()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def request(port: int, path: str = "/metrics", timeout: float = 5.0) -> tuple[int | None, dict, float]:
    """(status, headers, seconds); status None when no response came within ``timeout``."""
    t0 = time.monotonic()
    try:
        with connect(port, timeout) as s:
            s.sendall(REQ % path.encode())
            data = read_all(s)
    except OSError:
        return None, {}, time.monotonic() - t0
    return status_of(data), headers_of(data), time.monotonic() - t0


def status_of(data: bytes) -> int | None:
    parts = data.split(b" ", 2)
    return int(parts[1]) if data.startswith(b"HTTP/") and len(parts) > 1 else None


def headers_of(data: bytes) -> dict:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head if ":" in h)}


def in_thread(fn, *args) -> dict:
    """Run ``fn(*args)`` on a thread; the returned dict gets ``result`` when it ends."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("result", fn(*args)), daemon=True)
    t.start()
    out["thread"] = t
    return out


# -- each bound alone ------------------------------------------------------------

def test_full_queue_answers_503_at_once_while_health_keeps_answering(make_server):
    gated = GatedCollector()
    server, rejects = make_server(gated, workers=1, queue=1)
    first = in_thread(request, server.port, "/metrics", 15)
    wait_for(lambda: gated.entered == 1, 5, message="the only worker busy in a scrape")
    second = in_thread(request, server.port, "/metrics", 15)
    wait_for(lambda: server.load()["main"] == 1, 5, message="the second scrape queued")

    status, headers, took = request(server.port, "/metrics", timeout=5)
    assert status == 503 and took < 1.0, (status, took)
    assert headers.get("retry-after") == "1"
    assert rejects == ["queue_full"] and server.rejected()["queue_full"] == 1
    # The main lane is saturated; the health lane is not behind it.
    status, _, took = request(server.port, "/health/live", timeout=5)
    assert status == 200 and took < 1.0, (status, took)
    assert request(server.port, "/health/ready", timeout=5)[0] == 200

    gated.gate.set()
    for pending in (first, second):
        pending["thread"].join(15)
        assert pending["result"][0] == 200


def test_connection_that_sends_nothing_is_closed_at_the_idle_timeout(make_server):
    server, rejects = make_server(idle_timeout=0.5, header_timeout=5.0)
    with connect(server.port, timeout=5) as s:
        t0 = time.monotonic()
        assert read_all(s) == b""  # closed without a response: there was no request
        assert 0.4 <= time.monotonic() - t0 < 1.5
    wait_for(lambda: rejects == ["timeout"], 2, message="the timeout counted")
    assert server.load()["pending"] == 0


def test_slow_head_gets_408_at_the_header_deadline(make_server):
    server, rejects = make_server(idle_timeout=0.5, header_timeout=1.0)
    with connect(server.port, timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /metrics HTTP/1.0\r\n")
        # A byte every 0.2 s keeps the idle timer from firing: only the head deadline can.
        while not select.select([s], [], [], 0.2)[0]:
            assert time.monotonic() - t0 < 5, "the server never gave up on a slow head"
            s.sendall(b"X")
        data = read_all(s)
    assert status_of(data) == 408
    assert 0.9 <= time.monotonic() - t0 < 2.5
    assert rejects == ["timeout"]


def test_oversized_head_gets_431(make_server):
    server, rejects = make_server(max_head=1024)
    with connect(server.port) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        assert status_of(read_all(s)) == 431
    assert rejects == ["bad_request"]


def test_malformed_request_line_is_a_counted_400(make_server):
    server, rejects = make_server()
    with connect(server.port) as s:
        s.sendall(b"GET /metrics extra HTTP/1.0\r\n\r\n")
        assert status_of(read_all(s)) == 400
    assert rejects == ["bad_request"]


def test_oldest_pending_connection_is_evicted_for_a_newcomer(make_server):
    server, rejects = make_server(max_pending=2, idle_timeout=30.0, header_timeout=30.0)
    oldest, other = connect(server.port), connect(server.port)
    try:
        wait_for(lambda: server.load()["pending"] == 2, 5, message="two idle connections pending")
        assert request(server.port, "/health/live")[0] == 200
        data = read_all(oldest)
        assert status_of(data) == 503 and headers_of(data)["retry-after"] == "1"
        other.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open, still waiting
            other.recv(1)
        assert rejects == ["evicted"]
    finally:
        oldest.close()
        other.close()


def test_listen_backlog_holds_a_burst_of_connects():
    """Connections wait in the kernel's queue while the server is not accepting yet."""
    server = MetricsServer("127.0.0.1:0", None, lambda: HEALTHY)  # listening, not started
    socks = []
    try:
        for _ in range(100):  # a backlog of 5 drops SYNs after the sixth
            socks.append(connect(server.port, timeout=0.5))
    finally:
        for s in socks:
            s.close()
        server.shutdown()


def test_client_resets_make_one_line_per_kind_and_no_traceback(make_server, caplog, capfd):
    gated = GatedCollector()
    server, _ = make_server(gated, workers=2, queue=64, log_interval=60.0)
    n = 30
    with caplog.at_level(logging.WARNING, logger="metrics"):
        for _ in range(n):
            with connect(server.port) as s:
                s.sendall(REQ % b"/metrics")
                # Linger 0: close() sends a reset, the harshest way to leave.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        def noticed():
            lines = [r for r in caplog.records if r.name.startswith("metrics")]
            return lines, len(lines) + sum(server.ratelog.held().values())
        # Hold every response until all the clients are gone, so each write meets a reset.
        wait_for(lambda: server.load()["main"] + gated.entered + noticed()[1] >= n, 5,
                 message="every request read or its reset noticed")
        gated.gate.set()
        lines = wait_for(lambda: noticed()[1] >= n and noticed()[0], 10, message="every reset noticed")
    kinds = {r.getMessage().split(":", 1)[0] for r in lines}
    assert kinds <= {"broken_pipe", "connection_reset"}, kinds
    assert len(lines) == len(kinds)  # one line per kind within the interval
    assert not any(r.exc_info for r in lines)
    assert "Traceback" not in capfd.readouterr().err


def test_ratelog_one_line_per_kind_per_interval_with_the_held_count(caplog):
    now = [100.0]
    rl = RateLog(logging.getLogger("metrics.test_ratelog"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="metrics.test_ratelog"):
        assert rl.note("broken_pipe", "peer %s", "a")
        assert not rl.note("broken_pipe", "peer %s", "b")
        assert not rl.note("broken_pipe", "peer %s", "c")
        now[0] += 5.0
        assert rl.note("timeout", "peer %s", "d")  # another kind has its own budget
        now[0] += 4.9
        assert not rl.note("broken_pipe", "peer %s", "e")
        now[0] += 0.1
        assert rl.note("broken_pipe", "peer %s", "f")
        assert not rl.note("timeout", "peer %s", "g")
        rl.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "broken_pipe: peer a", "timeout: peer d",
        "broken_pipe: peer f (3 more since the last report)",
        "timeout: 1 more since the last report"]
    assert rl.held() == {}


@pytest.mark.parametrize("bad", [{"workers": 0}, {"queue": -1}, {"idle_timeout": 0},
                                 {"header_timeout": "5"}, {"backlog": 1.5}, {"retry_after": -1}])
def test_limits_reject_bad_values_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Limits(**bad)


# -- everything at once, default limits, server in its own process -------------------

SERVER = """
import logging, sys
logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from metrics.array import MetricArray
from metrics.collector import ArrayCollector
from metrics.exporter import serve
server = serve("127.0.0.1:0", ArrayCollector(MetricArray.in_memory(2, 8)),
               lambda: {"live": True, "ready": True, "reason": "", "components": {}})
print(server.port, flush=True)
sys.stdin.read()
server.shutdown()
"""

SLOW, SCRAPES, RESETS = 400, 200, 100
IDLE_LIMIT_S = 5.0 + 2.0  # default header deadline, plus slack for a loaded 2-core host


async def _slow_client(port: int, i: int, settled: list) -> float | None:
    """Connect, send nothing or half a request line; seconds until the server closed it."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, asyncio.TimeoutError):
        settled.append(i)
        return None
    settled.append(i)
    t0 = time.monotonic()
    try:
        if i % 2:
            writer.write(b"GET /metr")
        await asyncio.wait_for(reader.read(), 15)  # EOF (after any 408/503) = closed by the server
        return time.monotonic() - t0
    except ConnectionError:
        return time.monotonic() - t0
    except asyncio.TimeoutError:
        return None  # never closed
    finally:
        writer.close()


async def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int | None, dict, float]:
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        try:
            writer.write(REQ % path.encode())
            data = await asyncio.wait_for(reader.read(), timeout - (time.monotonic() - t0))
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError):
        return None, {}, time.monotonic() - t0
    return status_of(data), headers_of(data), time.monotonic() - t0


async def _resetting_client(port: int) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, asyncio.TimeoutError):
        return
    writer.write(REQ % b"/metrics")
    await writer.drain()
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _storm(port: int) -> dict:
    done = asyncio.Event()
    health: list[tuple[int | None, float]] = []

    async def probe():  # a liveness probe every 50 ms for as long as the storm lasts
        while not done.is_set():
            status, _, took = await _get(port, "/health/live", 5)
            health.append((status, took))
            await asyncio.sleep(0.05)

    prober = asyncio.create_task(probe())
    settled: list[int] = []
    slow = [asyncio.create_task(_slow_client(port, i, settled)) for i in range(SLOW)]
    # The slow connections pile up first; the real traffic arrives among them.
    deadline = time.monotonic() + 15
    while len(settled) < SLOW and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # Resets interleaved with scrapes, so that some reach a handler thread.
    every = SCRAPES // RESETS
    calls = [_get(port, "/metrics") if i % (every + 1) else _resetting_client(port)
             for i in range(SCRAPES + RESETS)]
    results = await asyncio.gather(*calls)
    slow_closed = await asyncio.gather(*slow)
    done.set()
    await prober
    return {"slow": slow_closed, "scrapes": [r for r in results if r is not None], "health": health}


class Sampler(threading.Thread):
    """Samples a process's threads and RSS every 20 ms until stopped."""

    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc = proc
        self.threads_max = 0
        self.rss_max = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            with self.proc.oneshot():
                self.threads_max = max(self.threads_max, self.proc.num_threads())
                self.rss_max = max(self.rss_max, self.proc.memory_info().rss)


def test_storm_of_slow_connections_and_scrapes_stays_bounded(tmp_path):
    log_path = tmp_path / "exporter.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log_file, env=env, cwd=str(ROOT))
    try:
        port = int(proc.stdout.readline())
        ps = psutil.Process(proc.pid)
        for path in ["/metrics"] * 20 + ["/health/live"] * 5:  # warm up before the baseline
            assert request(port, path)[0] == 200
        threads_before, rss_before, fds_before = ps.num_threads(), ps.memory_info().rss, ps.num_fds()

        sampler = Sampler(ps)
        sampler.start()
        out = asyncio.run(_storm(port))
        # Every connection of the storm is gone (the server closed the slow ones).
        wait_for(lambda: ps.num_fds() <= fds_before, 15, message="the storm's sockets closed")
        sampler.stop.set()
        sampler.join()
        rss_after = ps.memory_info().rss
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_lines = log_path.read_text().splitlines()

    ok = [s for s, _, _ in out["scrapes"] if s == 200]
    busy = [(h, t) for s, h, t in out["scrapes"] if s == 503]
    others = [(s, round(t, 2)) for s, _, t in out["scrapes"] if s not in (200, 503)]
    slow_closed = [t for t in out["slow"] if t is not None]
    health_ms = sorted(round(t * 1000) for _, t in out["health"])
    figures = {"threads": (threads_before, sampler.threads_max),
               "rss_mib": tuple(round(x / 2**20, 1) for x in (rss_before, sampler.rss_max, rss_after)),
               "200": len(ok), "503": len(busy), "other": others[:10],
               "slow_closed": len(slow_closed), "slow_close_max_s": round(max(slow_closed, default=0), 2),
               "health": (len(health_ms), health_ms[len(health_ms) // 2] if health_ms else None,
                          health_ms[-1] if health_ms else None),
               "health_codes": sorted({s for s, _ in out["health"]}, key=str), "log_lines": len(log_lines)}
    print("storm figures:", json.dumps(figures))

    assert sampler.threads_max <= threads_before, figures          # a fixed pool, no thread per connection
    assert not others, figures                                     # every scrape: 200 or 503, none hung
    assert ok, figures
    assert all(t < 2.0 and h.get("retry-after") for h, t in busy), figures  # the 503s are fast
    assert len(out["health"]) >= 3 and {s for s, _ in out["health"]} == {200}, figures
    assert health_ms[-1] < 2000, figures
    assert len(slow_closed) == SLOW and max(slow_closed) <= IDLE_LIMIT_S, figures
    assert rss_after - rss_before < 20 * 2**20, figures
    assert sampler.rss_max - rss_before < 64 * 2**20, figures
    assert len(log_lines) <= 20, log_lines[:30]
    assert not any("Traceback" in line for line in log_lines), log_lines[:30]
