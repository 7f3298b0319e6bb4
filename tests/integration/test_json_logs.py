"""``--log-format json``: one object per line, from every process of a real engine."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import signal

import numpy as np

from engine import identity, logfmt

from tests.harness import observe_all, wait_for

KEYS = {"time", "level", "role", "slot", "pid", "instance", "logger", "message"}


def parse_lines(text: str) -> list[dict]:
    """Every non-empty line must be one JSON object (fails naming the first that is not)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"line {n} is not JSON: {line!r}") from None
    return out


def test_formatter_fields_and_exception():
    out = io.StringIO()
    logger = logging.getLogger("engram.test-json")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logfmt.JsonFormatter("inst-a"))
    logger.addHandler(handler)
    saved = identity.ROLE, identity.SLOT
    identity.ROLE, identity.SLOT = "worker", 3
    try:
        logger.warning("queue %s is %d%% full", "high", 90)
        try:
            raise ValueError("bad shard")
        except ValueError:
            logger.exception("insert failed")
    finally:
        identity.ROLE, identity.SLOT = saved
        logger.removeHandler(handler)
    first, second = parse_lines(out.getvalue())
    assert KEYS <= set(first) and "exception" not in first
    assert (first["level"], first["role"], first["slot"], first["pid"], first["instance"]) == \
        ("warning", "worker", 3, os.getpid(), "inst-a")
    assert first["message"] == "queue high is 90% full"
    assert datetime.datetime.fromisoformat(first["time"].replace("Z", "+00:00")).tzinfo is not None
    assert second["level"] == "error" and "Traceback" in second["exception"]
    assert "ValueError: bad shard" in second["exception"]


def test_stray_stderr_lines_become_records():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("engram.test-stray")
    logger.propagate = False
    logger.addHandler(Keep())
    stream = logfmt.LinesAsRecords(logger)
    stream.write("Traceback (most recent call last):\n  File \"x\", line 1")
    assert records == ["Traceback (most recent call last):"]
    stream.write("\nRuntimeError: boom\n\n")
    stream.flush()
    assert records == ["Traceback (most recent call last):", '  File "x", line 1', "RuntimeError: boom"]


def test_real_engine_writes_only_json_lines_from_every_role(engine_factory):
    ep = engine_factory(log_format="json")
    eng = ep.engine()
    rng = np.random.default_rng(1)
    for space in ("logs-a", "logs-b", "logs-c", "logs-d"):
        observe_all(eng, space, np.arange(200, dtype=np.uint64), rng.standard_normal((200, 16)).astype(np.float32))
    wait_for(lambda: int(eng.inst.shard_counts.sum()) == 800, 30, message="all inserted")
    victim = eng.inst.live(1).pid
    # the supervisor logs the death at error level; at the graceful stop a
    # worker holding data logs its final snapshot
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: eng.inst.live(1).pid not in (0, victim), 30, message="worker slot 1 restarted")
    assert ep.terminate(60) == 0
    records = parse_lines(ep.log())
    for r in records:
        assert KEYS <= set(r), r
        assert r["instance"] == ep.name
    roles = {r["role"] for r in records}
    assert {"supervisor", "worker", "gateway", "exporter"} <= roles, roles
    assert all(isinstance(r["slot"], int) for r in records if r["role"] == "worker")
    assert all(r["slot"] is None for r in records if r["role"] != "worker")
    died = [r for r in records if r["role"] == "supervisor" and r["level"] == "error" and str(victim) in r["message"]]
    assert died, [r["message"] for r in records if r["role"] == "supervisor"]
    snapshots = [r for r in records if r["role"] == "worker" and "snapshot" in r["message"]]
    assert snapshots and all(f"slot {r['slot']}:" in r["message"] for r in snapshots), snapshots
