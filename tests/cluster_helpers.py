"""Real NATS servers and cluster hosts for the cluster tests, always torn down.

``NatsCluster`` starts ``nats-server`` processes (Debian's package, 2.9)
with JetStream, their own free ports and store directories, and for more
than one server explicit routes to each other. ``ClusterHost`` is an
``EngineProcess`` (tests.conftest) with the cluster flags, one worker and no
pinning, sized for small shared machines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.harness import EngineProcess, free_port, wait_for


async def _quiet(exc) -> None:
    return None


def nats_server_binary() -> str:
    path = shutil.which("nats-server")
    if path is None:  # scripts/test installs it; a missing binary is a failure, not a skip
        raise AssertionError("nats-server is not installed (apt-get install nats-server; scripts/test does)")
    return path


class NatsCluster:
    def __init__(self, tmp_path, size: int = 3):
        self.binary = nats_server_binary()
        self.size = size
        self.ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.dirs = [str(tmp_path / f"nats-{i}") for i in range(size)]
        self.logs = [str(tmp_path / f"nats-{i}.log") for i in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size

    @property
    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def args(self, i: int) -> list[str]:
        args = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.ports[i]), "-sd", self.dirs[i],
                "-n", f"n{i}"]
        if self.size > 1:
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i)
            args += ["--cluster_name", "engramtest", "--cluster", f"nats://127.0.0.1:{self.route_ports[i]}",
                     "--routes", routes]
        return args

    def start(self, i: int | None = None) -> "NatsCluster":
        for j in ([i] if i is not None else range(self.size)):
            os.makedirs(self.dirs[j], exist_ok=True)
            log = open(self.logs[j], "ab")
            self.procs[j] = subprocess.Popen(self.args(j), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        async def probe():
            import nats
            nc = await nats.connect(self.urls.split(","), connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=1, error_cb=_quiet)
            try:
                js = nc.jetstream(timeout=2)
                await js.account_info()  # answers once JetStream has its meta leader
                running = sum(p is not None and p.poll() is None for p in self.procs)
                if self.size > 1 and running == self.size:
                    # Every peer must be able to take a replica: a stream of
                    # --log-replicas 3 made before that is refused with "no
                    # suitable peers for placement".
                    await js.add_stream(name="READY_PROBE", subjects=["ready.probe"], num_replicas=self.size,
                                        storage="memory")
                    await js.delete_stream("READY_PROBE")
            finally:
                await nc.close()
            return True
        wait_for(lambda: asyncio.run(probe()), timeout, 0.2, "NATS JetStream ready")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i)


@pytest.fixture
def nats1(tmp_path):
    cluster = NatsCluster(tmp_path, 1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def nats3(tmp_path):
    cluster = NatsCluster(tmp_path, 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


CLUSTER_DEFAULTS = {"workers": "1", "no-pin": "", "lease-ttl": "3", "partitions": "8", "log-replicas": "1",
                    "cluster-snapshot-interval": "0"}


class ClusterHost(EngineProcess):
    def __init__(self, tmp_path, nats: NatsCluster, cluster: str, host_id: str, **overrides):
        self.port = free_port()
        flags = dict(CLUSTER_DEFAULTS, cluster=cluster, nats=nats.urls, host_id=host_id,
                     grpc_addr=f"127.0.0.1:{self.port}")
        flags.update(overrides)
        super().__init__(tmp_path, **flags)
        self.host_id = host_id

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds
