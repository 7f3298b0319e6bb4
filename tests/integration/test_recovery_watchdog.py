"""The watchdog tells a long recovery from a hang, and status tells a stopped worker from a running one."""

from __future__ import annotations

import os
import signal

import numpy as np

from tests.harness import EngineProcess, total, wait_for


def test_a_recovery_longer_than_the_worker_timeout_is_not_a_crash_loop(tmp_path):
    first = EngineProcess(tmp_path, workers=1)
    second = None
    try:
        first.start()
        rng = np.random.default_rng(3)
        assert first.engine().observe("slow-load", np.arange(2000), rng.standard_normal((2000, 16))).accepted == 2000
        wait_for(lambda: total(first) == 2000, 60, message="inserted")
        assert first.terminate(60) == 0  # the stop writes a final snapshot: the next start loads it
        first.cleanup()
        # Loading it takes 4 s (hook), four times --worker-timeout.
        second = first.successor(hooks={"recovery_delay_s": 4}, worker_timeout="1")
        second.start(wait=False)
        seen = wait_for(lambda: next((w for w in second.status()["workers"] if w["state"] == "recovering"), None),
                        60, interval=0.1, message="the slot reported recovering")
        assert 0.0 <= seen["recovery_progress"] <= 1.0
        second.wait_ready(60, workers=True)
        st = second.status()
        assert st["workers"][0]["restarts"] == 0 and "recovery_progress" not in st["workers"][0]
        assert total(second) == 2000
        assert "no heartbeat" not in second.log()
    finally:
        for e in (first, second):
            if e is not None:
                e.terminate(60)
                e.cleanup()


def test_status_shows_a_stopped_worker_as_unresponsive_not_running(engine_factory):
    ep = engine_factory()
    pid = ep.status()["workers"][1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: ep.status()["workers"][1]["state"] == "unresponsive", 30, message="unresponsive")
        assert ep.status()["workers"][0]["state"] == "running"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: ep.status()["workers"][1]["state"] == "running", 30, message="running again")
    assert ep.status()["workers"][1]["restarts"] == 0
