"""The TypeScript example client (examples/typescript) against a real engine.

Node.js and the example's npm packages are installed by scripts/test; a
missing one fails these tests with the command to run.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from engine.client import Client
from tests.harness import wait_for
from tests.gateway_helpers import enqueued, free_port, inserted, target, vectors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "typescript"
TSX = EXAMPLE / "node_modules" / ".bin" / "tsx"


def node_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    assert shutil.which("node"), "node is missing: scripts/test installs Debian's nodejs"
    assert TSX.exists(), f"{TSX} is missing: run 'npm ci' in {EXAMPLE} (scripts/test does)"
    return subprocess.Popen([str(TSX), "src/cli.ts", *args], cwd=EXAMPLE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)


def run_node(*args: str, timeout: float = 60) -> tuple[int, list[dict], str]:
    proc = node_cli(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, [json.loads(line) for line in out.splitlines() if line.strip()], err


class Lines:
    """A running Node command's stdout, one parsed JSON line at a time, read on a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.seen: list[dict] = []
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip():
                self.q.put(json.loads(line))

    def poll(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self.q.get_nowait())
            except queue.Empty:
                return self.seen


def write_array(path: Path, array: np.ndarray, dtype: str) -> str:
    path.write_bytes(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return str(path)


def gateway_pid(ep) -> int | None:
    """From the status object that ``engram-stream status --json`` prints."""
    return ep.engine().status()["gateway"]["pid"]


def test_the_example_typechecks():
    tsc = EXAMPLE / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), f"run 'npm ci' in {EXAMPLE}"
    out = subprocess.run([str(tsc), "--noEmit"], cwd=EXAMPLE, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stream_resumes_after_gateway_kill_9_and_recall_equals_python(engine_factory, tmp_path):
    port = free_port()  # a restarted gateway binds the same port again
    ep = engine_factory(grpc_addr=f"127.0.0.1:{port}")
    tgt = f"127.0.0.1:{port}"
    n, batch = 4000, 100
    ids = np.arange(n, dtype=np.uint64) + np.uint64(2**60)  # past 2^53: must survive as BigInt
    vecs = vectors(n, 11)
    proc = node_cli("stream", "--target", tgt, "--space", "from-node", "--batch", str(batch), "--pause-ms", "60",
                    "--ids", write_array(tmp_path / "ids.bin", ids, "<u8"),
                    "--vectors", write_array(tmp_path / "vectors.bin", vecs, "<f4"))
    lines = Lines(proc)
    killed = []
    try:
        for at in (8, 20):
            wait_for(lambda: len(lines.poll()) >= at, 60, message=f"{at} acks")
            assert not lines.seen[-1].get("done"), "the stream ended before the kill"
            pid = wait_for(lambda: gateway_pid(ep), 30, message="a gateway pid in status")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for(lambda: gateway_pid(ep) not in (None, pid), 30, message="gateway restarted")
        wait_for(lambda: lines.poll() and lines.seen[-1].get("done"), 120, message="the stream finished")
        proc.wait(30)  # it prints "done" just before it exits: let it exit before the cleanup below
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    acks, done = lines.seen[:-1], lines.seen[-1]
    assert proc.returncode == 0, proc.stderr.read()
    assert done["accepted"] == n and done["reconnects"] >= 1 and done["drained"], (done, proc.stderr.read())
    assert {a["sessionId"] for a in acks} == {done["sessionId"]}  # resumed, never reopened
    assert int(done["sessionId"]) > 0 and str(int(done["sessionId"])) == done["sessionId"]
    assert all(a["accepted"] == batch and not a["rejected"] for a in acks), [a for a in acks if a["rejected"]]
    wait_for(lambda: inserted(ep, "from-node") == n, 60, message="all inserted")
    assert enqueued(ep) == n  # exactly once across the kills

    queries = vecs[::200]
    code, out, err = run_node("recall", "--target", tgt, "--space", "from-node", "--k", "5",
                              "--queries", write_array(tmp_path / "q.bin", queries, "<f4"))
    assert code == 0, err
    with Client(tgt) as c:
        expected = c.recall("from-node", queries, k=5)
    got_ids = np.array([[int(x) for x in row] for row in out[0]["ids"]], dtype=np.uint64)
    np.testing.assert_array_equal(got_ids, expected.ids)
    np.testing.assert_allclose(np.array(out[0]["distances"]), expected.distances, rtol=1e-6, atol=1e-6)
    assert got_ids[:, 0].tolist() == ids[::200].tolist()


def test_health_and_reflection_from_node(engine_factory):
    ep = engine_factory()
    tgt = target(ep)
    for service in ("", "engram.v1.Engram"):
        code, out, err = run_node("health", "--target", tgt, "--service", service)
        assert code == 0 and out[0]["status"] == "SERVING", (out, err)
    code, out, err = run_node("services", "--target", tgt)
    assert code == 0, err
    assert "engram.v1.Engram" in out[0]["services"]


def test_forget_from_node_unary_and_in_a_session(engine_factory, tmp_path):
    ep = engine_factory()
    tgt = target(ep)
    n, space = 1000, "forget-node"
    ids = np.arange(n, dtype=np.uint64) + np.uint64(2**60)  # past 2^53: must survive as BigInt
    vecs = vectors(n, 13)
    with Client(tgt) as c, c.stream(space) as s:
        assert s.send(ids, vecs).accepted == n
    wait_for(lambda: inserted(ep, space) == n, 60, message="all inserted")

    unknown = np.arange(5, dtype=np.uint64) + np.uint64(7)  # never observed
    code, out, err = run_node("forget", "--target", tgt, "--space", space,
                              "--ids", write_array(tmp_path / "f1.bin", np.concatenate([ids[:300], unknown]), "<u8"))
    assert code == 0, err
    assert out[0]["accepted"] == 305 and out[0]["notFound"] == 5 and out[0]["applied"] is True, out
    assert ep.engine().status()["spaces"][space]["vectors"] == n - 300  # applied means counted out already

    code, out, err = run_node("forget", "--target", tgt, "--space", space, "--session",
                              "--ids", write_array(tmp_path / "f2.bin", ids[300:500], "<u8"))
    assert code == 0, err
    assert out[0]["accepted"] == 200 and out[0]["notFound"] == 0 and out[0]["drained"] is True, out
    assert not out[0]["rejected"], out
    wait_for(lambda: ep.engine().status()["spaces"][space]["vectors"] == n - 500, 30, message="session forgets applied")
    with Client(tgt) as c:
        got = c.recall(space, vecs, k=50)
    assert got.complete and not set(got.ids.ravel().tolist()) & set(ids[:500].tolist())
    assert got.ids[500:, 0].tolist() == ids[500:].tolist()  # the others still find themselves

    code, out, err = run_node("forget", "--target", tgt, "--space", "bad space!",
                              "--ids", write_array(tmp_path / "f3.bin", ids[:1], "<u8"))
    assert code == 2 and out[0]["error"]["name"] == "INVALID_ARGUMENT", (out, err)


def test_recall_with_k_0_is_refused(engine_factory, tmp_path):
    ep = engine_factory()
    ep.engine().observe("k-zero", np.arange(3, dtype=np.uint64), vectors(3, 2))
    code, out, err = run_node("recall", "--target", target(ep), "--space", "k-zero", "--k", "0",
                              "--queries", write_array(tmp_path / "q.bin", vectors(1, 2), "<f4"))
    assert code == 2 and out[0]["error"]["name"] == "INVALID_ARGUMENT", (out, err)


def test_stream_with_1s_keepalive_pings_stays_open_60s(engine_factory):
    ep = engine_factory()
    seconds = 60
    proc = node_cli("hold", "--target", target(ep), "--space", "keepalive", "--seconds", str(seconds),
                    "--keepalive-ms", "1000", env={"GRPC_TRACE": "keepalive", "GRPC_VERBOSITY": "DEBUG"})
    lines = Lines(proc)
    try:
        wait_for(lambda: lines.poll(), 30, message="the client started")
        wait_for(lambda: ep.engine().status()["gateway"]["sessions"] == 1, 30, message="the session opened")
        opened = time.monotonic()
        # While held, the session must stay open on the gateway the whole time
        # (checked until 2 s before the client's own end: it closes the
        # stream at `seconds`, a moment before its process exits).
        while proc.poll() is None and time.monotonic() - opened < seconds + 60:
            if time.monotonic() - opened < seconds - 2:
                assert ep.engine().status()["gateway"]["sessions"] == 1 or proc.poll() is not None
            time.sleep(0.5)
        assert proc.poll() is not None, "hold did not finish"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    err = proc.stderr.read()
    result = lines.poll()[-1]
    assert proc.returncode == 0 and result.get("held") == seconds, (result, err[-3000:])
    assert result["accepted"] == 1 and result["reconnects"] == 0, result
    pings = err.count("Sending ping")
    assert pings >= seconds // 2, f"only {pings} keepalive pings were sent:\n{err[-3000:]}"
    assert "too_many_pings" not in err
