"""The remote client loads no shared-memory code (DESIGN §1): a producer on
another host needs grpc and numpy, not posix_ipc or the engine's processes.

Checked in a fresh interpreter, since this test process has long imported
everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness import ROOT
FORBIDDEN = ("posix_ipc", "shm", "metrics", "engine.control", "engine.producer")

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
forbidden = {forbidden!r}
print(json.dumps(sorted(m for m in sys.modules
                        if any(m == f or m.startswith(f + ".") for f in forbidden))))
""".format(forbidden=FORBIDDEN)


def loaded_forbidden(*modules: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_remote_client_loads_no_shared_memory_code():
    assert loaded_forbidden("engine.client") == []


def test_every_client_module_alone_stays_clean():
    for mod in ("engine.client.targets", "engine.client.common", "engine.client.session",
                "engine.client.blocking", "engine.client.aio"):
        assert loaded_forbidden(mod) == [], mod


def test_the_probe_sees_a_shared_memory_import():
    # the same probe on the local producer must report it, or the checks above prove nothing
    got = loaded_forbidden("engine.producer.api")
    assert "posix_ipc" in got and "engine.control.instance" in got and "shm.ring" in got
