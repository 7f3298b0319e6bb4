"""Fixtures that start real engine instances and always tear them down.

Each instance runs ``python -m engine run`` in its own session (process
group), with a unique name and data directory. Teardown: SIGTERM, wait, then
SIGKILL of the whole group, then removal of any shared-memory object of that
name, whatever the test did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from shm.segment import instance_objects, remove_instance_objects

DEFAULTS = {
    "workers": "2", "dim": "16", "capacity-high": "2000", "capacity-normal": "20000",
    "capacity-low": "10000", "worker-timeout": "20", "graceful-timeout": "20",
    "metrics-addr": "127.0.0.1:0", "grpc-addr": "127.0.0.1:0",
}


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the instance may still be starting
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


class EngineProcess:
    def __init__(self, tmp_path, **overrides):
        self.name = f"t{os.getpid()}x{uuid.uuid4().hex[:8]}"
        self.data_dir = str(tmp_path / f"data-{self.name}")
        self.log_path = str(tmp_path / f"{self.name}.log")
        flags = dict(DEFAULTS)
        flags.update({k.replace("_", "-"): str(v) for k, v in overrides.items()})
        self.args = [sys.executable, "-m", "engine", "run", "--name", self.name, "--data-dir", self.data_dir]
        for k, v in flags.items():
            if v == "":
                self.args.append(f"--{k}")
            else:
                self.args += [f"--{k}", v]
        self.proc: subprocess.Popen | None = None
        self._engine = None

    def start(self, wait: bool = True) -> "EngineProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=os.path.dirname(self.data_dir))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited with {self.proc.returncode}:\n{self.log()}")
            st = self.status()
            return st["state"] == "running"
        wait_for(ready, timeout, message=f"instance {self.name} ready")

    def engine(self):
        if self._engine is None:
            from engine import connect
            self._engine = connect(self.name)
        return self._engine

    def status(self) -> dict:
        from engine import connect
        with connect(self.name) as eng:
            return eng.status()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-20000:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll()

    def cleanup(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        remove_instance_objects(self.name)
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture
def engine_factory(tmp_path, request):
    """``start(**flags)`` → a running EngineProcess; everything is torn down after the test."""
    made: list[EngineProcess] = []

    def start(wait: bool = True, **overrides) -> EngineProcess:
        ep = EngineProcess(tmp_path, **overrides)
        made.append(ep)
        return ep.start(wait)

    yield start
    failed = getattr(request.node, "rep_call", None)
    for ep in made:
        ep.terminate(30)
        if failed is not None and failed.failed:
            sys.stderr.write(f"\n--- log of {ep.name} ---\n{ep.log()}\n")
        ep.cleanup()
        assert not instance_objects(ep.name), f"shared memory of {ep.name} left behind"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def observe_all(eng, space, ids, vectors, priority="normal", timeout: float = 60.0) -> int:
    """Submit a batch like a well-behaved producer: resubmit the rejected
    suffix (accepted entries are always a prefix) until all are accepted."""
    import numpy as np
    ids = np.asarray(ids)
    done = 0
    def step():
        nonlocal done
        ack = eng.observe(space, ids[done:], vectors[done:], priority=priority)
        done += ack.accepted
        return done == len(ids)
    wait_for(step, timeout, interval=0.01, message=f"{len(ids)} observations accepted")
    return done
