"""The whole process group killed with SIGKILL (supervisor, workers, exporter,
gateway) while observations are queued and claimed: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal


from tests.harness import EngineProcess, batch, observe_all, total, wait_for

DIM = 16


def test_killed_process_group_loses_no_acknowledged_observation(tmp_path):
    """kill -9 of supervisor, workers and exporter at once, with observations
    queued and some claimed in flight: the next start carries them over from
    the dead run's shared memory, replays the logs, and has every one, once."""
    from engine.control.layouts import LANE_INDEX
    from engine.producer.routing import home_slot
    first = EngineProcess(tmp_path, fsync="always", steal_threshold=100000)
    try:
        first.start()
        eng = first.engine()
        ids, vecs = batch(1300, 8)
        observe_all(eng, "survivor", ids[:300], vecs[:300])
        wait_for(lambda: total(first) == 300, 60, message="first part inserted (and logged)")
        pids = [w["pid"] for w in first.status()["workers"]]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        assert eng.observe("survivor", ids[300:], vecs[300:]).accepted == 1000
        slot = home_slot("survivor", 2)
        ring = eng.inst.ring(slot, LANE_INDEX["normal"])
        claims = ring.claim_many(400, 200, slot)  # in flight in the worker's name when all died
        assert sum(c.count for c in claims) == 400
        os.killpg(first.proc.pid, signal.SIGKILL)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        first.proc.wait(30)
        first.disconnect()
    finally:
        if first.proc.poll() is None:
            first.cleanup()
    second = first.successor()
    try:
        second.start()
        wait_for(lambda: total(second) == 1300, 60, message="every acknowledged observation back")
        assert "carried over 1000 acknowledged observation(s)" in second.log()
        wait_for(lambda: all(w["state"] == "running" for w in second.status()["workers"]), 60,
                 message="both slots running again")
        res = second.engine().recall("survivor", vecs, k=1)
        assert res.complete
        assert (res.ids[:, 0] == ids).mean() >= 0.99
    finally:
        second.terminate(60)
        second.cleanup()
        first.cleanup()
