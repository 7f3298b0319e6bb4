"""The gateway killed with SIGKILL three times under a streaming client: the
client resumes its session each time, nothing is lost or queued twice."""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.request

import numpy as np

from engine.client import Client
from tests.gateway_helpers import enqueued, inserted, vectors
from tests.harness import free_port, wait_for


def test_gateway_kill_9_client_resumes_without_loss_or_duplicate(engine_factory):
    port = free_port()
    ep = engine_factory(grpc_addr=f"127.0.0.1:{port}")
    tgt = f"127.0.0.1:{port}"
    inst = ep.engine().inst
    n, batch = 6000, 200
    ids, vecs = np.arange(n, dtype=np.uint64), vectors(n, 7)
    sent = {"acks": []}
    killed = []

    def killer():
        for _ in range(3):
            wait_for(lambda: len(sent["acks"]) >= 5 * (len(killed) + 1), 60, interval=0.005,
                     message="progress before a kill")
            pid = int(inst.header.gateway_pid)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_for(lambda: int(inst.header.gateway_pid) not in (0, pid), 30, message="gateway restarted")

    k = threading.Thread(target=killer)
    k.start()
    with Client(tgt, retry_timeout=60) as c, c.stream("resume") as s:
        first_id = s.session_id
        for lo in range(0, n, batch):
            sent["acks"].append(s.send(ids[lo:lo + batch], vecs[lo:lo + batch]))
        assert s.session_id == first_id  # resumed, not reopened
    k.join(60)
    assert len(killed) == 3
    assert sum(a.accepted for a in sent["acks"]) == n
    assert all(not a.rejected for a in sent["acks"]), [a for a in sent["acks"] if a.rejected]
    wait_for(lambda: inserted(ep, "resume") == n, 60, message="all inserted")
    assert enqueued(ep) == n
    assert "restarted" in ep.log()
    st = ep.engine().status()
    assert st["throughput"]["observations_total"] == n
    assert st["gateway"]["pid"] not in killed and st["gateway"]["port"] == port
    health = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{ep.exporter_port()}/api/v1/system/health", timeout=10).read())
    assert health["components"]["gateway"]["status"] == "up"
