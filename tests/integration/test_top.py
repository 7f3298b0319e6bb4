"""``engram-stream top`` against a real engine: in a terminal (tmux) and piped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

from tests.harness import observe_all, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_top_in_a_terminal_refreshes_and_quits_on_q(engine_factory):
    assert shutil.which("tmux"), "tmux is missing: scripts/test installs Debian's tmux"
    ep = engine_factory()
    eng = ep.engine()
    observe_all(eng, "top-space", np.arange(500, dtype=np.uint64),
                np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32))
    pids = [w["pid"] for w in ep.status()["workers"]]
    sock = f"engram-top-{uuid.uuid4().hex[:8]}"  # a private tmux server: nobody else's sessions
    tmux = ["tmux", "-L", sock]
    command = (f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m engine top --name {ep.name} "
               f"--interval 0.3; echo top-exited-$?; sleep 30")
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "160", "-y", "40", command], check=True,
                   env={k: v for k, v in os.environ.items() if k != "TMUX"})

    def pane() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True,
                              timeout=10).stdout

    try:
        def full_frame():
            s = pane()
            return s if "ins/s" in s and all(str(p) in s for p in pids) else None

        screen = wait_for(full_frame, 30, message="a frame listing every worker")
        assert f"instance {ep.name}" in screen and "backpressure normal" in screen
        assert "p99 observe" in screen and "gateway sessions 0" in screen
        rows = [line.split() for line in screen.splitlines() if line.split()[:1] in (["0"], ["1"])]
        assert [int(r[1]) for r in rows] == pids
        # refreshes: a session opened after the first frame shows up
        from engine.client import Client
        from tests.gateway_helpers import target
        with Client(target(ep)) as c, c.stream("top-live"):
            wait_for(lambda: "gateway sessions 1" in pane(), 15, message="the frame to refresh")
        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True)
        wait_for(lambda: "top-exited-0" in pane(), 15, message="top to quit on q")
        assert "\x1b" not in pane()  # the alternate screen was left: the shell's screen is back
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_top_without_a_terminal_prints_plain_frames(engine_factory):
    ep = engine_factory()
    out = subprocess.run([sys.executable, "-m", "engine", "top", "--name", ep.name, "--interval", "0.2",
                          "--count", "2"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    assert out.stdout.count("engram top  instance") == 2
    assert out.stdout.count("\n   0 ") == 2 and out.stdout.count("\n   1 ") == 2
