"""Real engine instances for tests and benchmarks: start, wait, stop, clean up.

One instance is ``python -m engine run`` in its own session (process group),
with a unique name, its own data directory and a log file. The child gets
this checkout on its ``PYTHONPATH``, so it runs the code under test and not
whatever copy of the package is installed. Teardown: SIGTERM and a wait
(``terminate``), then SIGKILL of the whole group and removal of every
shared-memory object of that name (``cleanup``), whatever happened before.

``wait_for`` is the one polling helper: a condition polled against a
deadline, never a fixed sleep before an assert (STYLE §12).

No pytest here: ``bench/`` imports this module too (``tests.harness``, with
the repository root on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
from pathlib import Path

from shm.segment import instance_objects, remove_instance_objects

ROOT = str(Path(__file__).resolve().parent.parent)

# Flags of every test instance unless a test overrides them: small rings,
# ephemeral ports, and timeouts generous enough for a loaded 2-core machine.
TEST_FLAGS = {
    "workers": "2", "dim": "16", "capacity-high": "2000", "capacity-normal": "20000",
    "capacity-low": "10000", "worker-timeout": "20", "graceful-timeout": "20",
    "metrics-addr": "127.0.0.1:0", "grpc-addr": "127.0.0.1:0", "max-ids": "262144",
}


class WaitTimeout(AssertionError):
    """``wait_for`` reached its deadline."""


class Gone(AssertionError):
    """What is being waited for can no longer happen: ``wait_for`` stops at once."""


class EngineExited(Gone):
    """The supervisor process of an instance has exited."""


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``condition`` until it returns a truthy value (returned) or the deadline passes.

    An exception from ``condition`` counts as "not yet" (an instance may still
    be starting) and is reported if the deadline passes; a ``Gone`` is raised
    at once.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = condition()
        except Gone:
            raise
        except Exception as exc:
            last_exc = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message}"
                              + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def child_env(extra: dict | None = None) -> dict:
    """This process's environment with the checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *path])
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flag_args(flags: dict) -> list[str]:
    """``{"steal_threshold": 100, "no_pin": ""}`` -> ``["--steal-threshold", "100", "--no-pin"]``."""
    out: list[str] = []
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value == "" else [flag, str(value)]
    return out


class EngineProcess:
    """One ``python -m engine run``; nothing starts until ``start``.

    ``flags`` (underscores or dashes; ``""`` for a flag without value) are
    laid over ``defaults`` (the test flags unless given); ``extra_args`` are
    appended verbatim. ``hooks`` (``engine.config.hooks.Hooks`` fields) start
    the engine through ``tests.launch``, which injects them.
    """

    def __init__(self, workdir, *, defaults: dict | None = TEST_FLAGS, prefix: str = "t",
                 extra_args: tuple[str, ...] = (), log_tail: int = 20000, hooks: dict | None = None,
                 **flags):
        self.workdir = str(workdir)
        self.name = f"{prefix}{os.getpid()}x{uuid.uuid4().hex[:8]}"
        self.data_dir = os.path.join(self.workdir, f"data-{self.name}")
        self.log_path = os.path.join(self.workdir, f"{self.name}.log")
        self.log_tail = log_tail
        merged = {k.replace("_", "-"): v for k, v in (defaults or {}).items()}
        merged.update({k.replace("_", "-"): v for k, v in flags.items()})
        launcher = ["-m", "tests.launch", json.dumps(hooks)] if hooks else ["-m", "engine"]
        self.args = [sys.executable, *launcher, "run", "--name", self.name,
                     "--data-dir", self.data_dir, *flag_args(merged), *extra_args]
        self.proc: subprocess.Popen | None = None
        self._engine = None
        self._log = None
        self._runs = 1

    def successor(self, hooks: dict | None = None, **flags) -> "EngineProcess":
        """An instance of the same name on the same data directory (a restart),
        with ``flags`` added (and ``hooks`` injected, if given); it logs to a
        file of its own."""
        nxt = EngineProcess.__new__(EngineProcess)
        nxt.__dict__.update(self.__dict__)
        nxt._runs = self._runs + 1
        nxt.log_path = os.path.join(self.workdir, f"{self.name}.{nxt._runs}.log")
        nxt.args = self.args + flag_args(flags)
        if hooks is not None:
            run = nxt.args.index("run")
            nxt.args = [sys.executable, "-m", "tests.launch", json.dumps(hooks)] + nxt.args[run:]
        nxt.proc = nxt._engine = nxt._log = None
        return nxt

    # -- lifecycle -------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = 60.0) -> "EngineProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.workdir, env=child_env())
        if wait:
            self.wait_ready(timeout)
        return self

    def exporter_port(self, timeout: float = 30.0) -> int:
        """The exporter's bound port, once it has published it: the exporter
        binds after the supervisor already reports ``running``."""
        return wait_for(lambda: int(self.engine().inst.header.exporter_port), timeout, message="the exporter's port")

    def check_alive(self) -> None:
        """Raise ``EngineExited`` (with the log tail) once the supervisor has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise EngineExited(f"engine {self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def wait_ready(self, timeout: float = 60.0, workers: bool = False) -> dict:
        """Poll until the instance reports ``running`` (and, with ``workers``,
        every worker slot too); returns that status."""
        def ready():
            self.check_alive()
            st = self.status()
            if st["state"] != "running":
                return None
            if workers and not all(w["state"] == "running" for w in st["workers"]):
                return None
            return st
        try:
            return wait_for(ready, timeout, message=f"instance {self.name} ready")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n{self.log()}") from None

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the supervisor and wait up to ``timeout``; its exit code, or None if still running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll()

    def cleanup(self) -> list[str]:
        """SIGKILL the whole process group, remove the instance's shared memory,
        close the log. Safe to repeat and after a half-finished start; returns
        the shared-memory objects still there afterwards (none, normally)."""
        self.disconnect()
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
        if self._log is not None:
            self._log.close()
            self._log = None
        return instance_objects(self.name)

    # -- talking to it -----------------------------------------------------------
    def engine(self):
        """A producer connection (``engine.connect``), made once and kept."""
        if self._engine is None:
            from engine import connect
            self._engine = connect(self.name)
        return self._engine

    def disconnect(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def status(self) -> dict:
        """The status JSON, over a fresh connection."""
        from engine import connect
        with connect(self.name) as eng:
            return eng.status()

    def log(self) -> str:
        """The last ``log_tail`` characters of this run's log."""
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-self.log_tail:]
        except OSError:
            return ""


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


def forget_all(eng, space, ids, timeout: float = 60.0) -> int:
    """Forget like a well-behaved producer: resubmit the rejected suffix until
    all are accepted; returns how many of them were not found."""
    ids = np.asarray(ids)
    done, missing = 0, 0

    def step():
        nonlocal done, missing
        res = eng.forget(space, ids[done:], wait=False)
        done += res.accepted
        missing += res.not_found
        return done == len(ids)
    wait_for(step, timeout, interval=0.01, message=f"{len(ids)} forgets accepted")
    return missing


def total(ep) -> int:
    """Vectors in HNSW across every space of a running engine."""
    return sum(s["vectors"] for s in ep.status()["spaces"].values())


def batch(n: int, seed: int, start: int = 0, dim: int = 16):
    """Ids ``start .. start+n`` and ``n`` seeded standard-normal float32 vectors of ``dim``."""
    rng = np.random.default_rng(seed)
    return np.arange(start, start + n, dtype=np.uint64), rng.standard_normal((n, dim)).astype(np.float32)
