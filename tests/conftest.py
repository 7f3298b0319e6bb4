"""Test layers, and the fixture that starts real engine instances.

Layers, one folder each, marked by folder (``pytest -m unit`` and so on):

* ``unit/``         no engine process: in-process shared memory, forked helper
                    processes at most; seconds for the whole layer
* ``integration/``  real engines (``engine_factory``, ``EngineProcess``,
                    ``python -m engine`` subprocesses)
* ``chaos/``        real engines under kill storms, kill -9 cycles, flapping, a
                    whole process group killed with work in flight
* ``ops/``          Grafana dashboard, Prometheus rules and a live Prometheus,
                    generated docs

A test file outside these folders is refused at collection: every test
belongs to exactly one layer.

``engine_factory`` starts instances through ``tests.harness`` and always
tears them down: SIGTERM, wait, SIGKILL of the whole group, removal of any
shared-memory object of that name, whatever the test did.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from shm.segment import instance_objects
from tests.harness import EngineProcess, child_env
from tests.harness import observe_all, wait_for  # noqa: F401  (still importable from here)

# Fixtures that start real nats-server processes (nats1, nats3) for the cluster tests.
pytest_plugins = ["tests.cluster_helpers"]

LAYERS = ("unit", "integration", "chaos", "ops")
TESTS = Path(__file__).resolve().parent

# Subprocesses a test starts itself (``python -m engine status``, the console
# script) run this checkout too, not an installed copy.
os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]


def layer_of(path: Path) -> str | None:
    try:
        parts = Path(path).resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    strays = set()
    for item in items:
        layer = layer_of(item.path)
        if layer is None:
            strays.add(str(item.path))
            continue
        item.add_marker(getattr(pytest.mark, layer))
    if strays:
        raise pytest.UsageError(
            "test files outside a layer folder (move each into tests/"
            + "|".join(LAYERS) + "/): " + ", ".join(sorted(strays)))


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
