"""Stopping loses nothing, handles of a dead run accept nothing, and a start
refuses what its data directory cannot hold. Real engines, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import numpy as np
import psutil
import pytest

from engine import exitcodes
from engine.errors import NotRunning
from engine.rpc import engram_pb2 as pb
from engine.rpc import engram_pb2_grpc as pb_grpc
from engine.supervisor import spill
from tests.gateway_helpers import RawStream, target
from tests.harness import EngineProcess, child_env, total, wait_for

N = 60_000
DIM = 96


@pytest.mark.parametrize("graceful", ["2", "5"])
def test_a_graceful_stop_that_times_out_keeps_the_backlog_exactly_once(tmp_path, graceful):
    # Insertion made slow (dim 96, M 48, ef_construction 400) so that the rings
    # still hold most of what was acknowledged when --graceful-timeout runs out.
    ep = EngineProcess(tmp_path, dim=DIM, hnsw_m=48, ef_construction=400, capacity_normal=100000,
                       graceful_timeout=graceful, snapshot_wal_bytes=0, snapshot_interval=0)
    second = None
    try:
        ep.start()
        eng = ep.engine()
        rng = np.random.default_rng(5)
        vecs = rng.standard_normal((N, DIM)).astype(np.float32)
        spaces = ["flood-a", "flood-b", "flood-c"]
        for k, space in enumerate(spaces):
            part = slice(k * N // 3, (k + 1) * N // 3)
            ids = np.arange(N)[part]
            for lo in range(0, len(ids), 2000):
                ack = eng.observe(space, ids[lo:lo + 2000], vecs[part][lo:lo + 2000])
                assert ack.accepted == len(ids[lo:lo + 2000]), ack
        queued = sum(q["depth"] for q in ep.status()["queues"].values())
        assert queued > 1000, f"only {queued} queued: the backlog this test needs did not build"
        assert ep.terminate(120) == exitcodes.BACKLOG
        log = ep.log()
        assert "queued observation(s) were saved to" in log and "queued again at the next start" in log
        assert "did not stop within" not in log  # gateway and exporter stopped on SIGTERM
        assert "gateway stopping (SIGTERM)" in log and "exporter stopping (SIGTERM)" in log
        assert os.path.exists(spill.path(ep.data_dir))
        ep.cleanup()

        second = ep.successor()
        second.start()
        assert "saved by the last stop" in second.log()
        assert not os.path.exists(spill.path(ep.data_dir))  # queued again: the file is gone
        wait_for(lambda: total(second) == N, 240, interval=0.5, message=f"all {N} acknowledged inserted")
        counts = {name: s["vectors"] for name, s in second.status()["spaces"].items()}
        assert counts == {space: N // 3 for space in spaces}  # exactly once: no more, no fewer
        eng2 = second.engine()
        sample = rng.choice(N, 200, replace=False)
        for k, space in enumerate(spaces):
            mine = sample[(sample >= k * N // 3) & (sample < (k + 1) * N // 3)]
            res = eng2.recall(space, vecs[mine], k=1)
            assert res.complete and (res.ids[:, 0] == mine).mean() >= 0.95
    finally:
        for e in (ep, second):
            if e is not None:
                e.terminate(60)
                e.cleanup()


def test_open_streams_get_a_final_status_at_a_stop(engine_factory):
    ep = engine_factory()
    with grpc.insecure_channel(target(ep)) as channel:
        stream = RawStream(pb_grpc.EngramStub(channel))
        stream.send(init=pb.Init(space="final-status", priority=pb.PRIORITY_NORMAL))
        ready = stream.reply("ready")
        ack = stream.batch(1, [1, 2, 3], np.ones((3, 16), np.float32))
        assert ack.accepted == 3
        ep.proc.send_signal(signal.SIGTERM)
        messages = list(stream.call)  # ends when the gateway ends the call
        finals = [m.status for m in messages if m.WhichOneof("kind") == "status" and "stopping" in m.status.message]
        assert finals and finals[-1].paused
        assert "every batch acknowledged so far is kept" in finals[-1].message
        assert str(ready.session_id) in finals[-1].message
        assert stream.call.code() == grpc.StatusCode.OK  # a clean end, not UNAVAILABLE
    assert ep.proc.wait(60) == exitcodes.OK


def test_a_handle_of_a_killed_run_accepts_nothing_even_when_its_pid_is_reused(tmp_path):
    ep = EngineProcess(tmp_path)
    second = None
    try:
        ep.start()
        old = ep.engine()
        vec = np.ones((100, 16), np.float32)
        assert old.observe("reuse", np.arange(100), vec).accepted == 100
        pids = [p.pid for p in psutil.Process(ep.proc.pid).children(recursive=True)] + [ep.proc.pid]
        os.killpg(ep.proc.pid, signal.SIGKILL)
        ep.proc.wait(30)
        wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                 for p in pids), 30, message="the engine's processes gone")
        # Another live process now has the dead supervisor's pid (simulated:
        # this test process's pid written where the pid was).
        old.inst.ctl["hdr"][1] = os.getpid()
        with pytest.raises(NotRunning, match="supervisor is gone"):
            old.observe("reuse", np.arange(100, 200), vec)
        second = ep.successor()
        second.start()
        with pytest.raises(NotRunning, match="restarted"):
            old.observe("reuse", np.arange(200, 300), vec)
        assert second.engine().observe("reuse", np.arange(300, 400), vec).accepted == 100
        wait_for(lambda: total(second) == 200, 60, message="the carried-over 100 and the new 100")
    finally:
        for e in (ep, second):
            if e is not None:
                e.terminate(60)
                e.cleanup()


def run_refused(ep, *flags) -> subprocess.CompletedProcess:
    args = ep.args + list(flags)
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=child_env(), cwd=ep.workdir)


def test_a_start_refuses_max_spaces_below_the_spaces_on_disk_and_other_hnsw_parameters(tmp_path):
    ep = EngineProcess(tmp_path, snapshot_wal_bytes=0, snapshot_interval=0)
    try:
        ep.start()
        eng = ep.engine()
        for k in range(5):
            assert eng.observe(f"space-{k}", np.arange(10), np.ones((10, 16), np.float32)).accepted == 10
        wait_for(lambda: total(ep) == 50, 60, message="inserted")
        assert ep.terminate(60) == exitcodes.OK
        ep.cleanup()
        out = run_refused(ep, "--max-spaces", "3")
        assert out.returncode == exitcodes.CONFIG, out.stderr
        assert "--max-spaces=3 is below the 5 memory spaces" in out.stderr and "--max-spaces 5" in out.stderr
        out = run_refused(ep, "--hnsw-m", "8")
        assert out.returncode == exitcodes.CONFIG, out.stderr
        assert "--hnsw-m 16" in out.stderr and "--hnsw-m=8 given" in out.stderr
        out = run_refused(ep, "--ef-construction", "100")
        assert out.returncode == exitcodes.CONFIG and "--ef-construction 200" in out.stderr
        second = ep.successor(max_spaces="5")  # exactly enough is fine
        second.start()
        assert total(second) == 50
        second.terminate(60)
        second.cleanup()
    finally:
        ep.terminate(60)
        ep.cleanup()


def test_standalone_gateway_and_exporter_loops_sleep_and_stop_on_sigterm(tmp_path):
    """Without a supervisor pid (0) the children's loops wait on SIGTERM, never spin."""
    code = (
        "import os, signal, sys, threading, time\n"
        "from engine.signals import SignalQueue\n"
        "q = SignalQueue(); t0 = time.process_time()\n"
        "threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
        "q.install((signal.SIGTERM,))\n"
        "while q.pop() != signal.SIGTERM: q.wait(0.25)\n"
        "q2 = SignalQueue(); t1 = time.process_time(); end = time.monotonic() + 0.5\n"
        "while time.monotonic() < end: q2.wait(0.1)  # not installed: still sleeps\n"
        "print(time.process_time() - t0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=child_env())
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 0.3  # 1.5 s of waiting cost almost no CPU
