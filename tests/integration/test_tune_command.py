"""``engram-stream tune`` on this host: the table, a recommendation, a config that ``run`` accepts."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from engine.cli import tune


def test_cgroup_quota_and_steps(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert tune.cgroup_cpus(str(quota)) == 1.5
    quota.write_text("max 100000\n")
    assert tune.cgroup_cpus(str(quota)) is None
    assert tune.cgroup_cpus(str(tmp_path / "missing")) is None
    assert tune.steps([0])[:2] == [0.5, 1.0]
    rows = [{"workers_per_core": 0.5, "throughput": 1000.0, "observation_p99_s": 0.5},
            {"workers_per_core": 1.0, "throughput": 1030.0, "observation_p99_s": 0.9},
            {"workers_per_core": 2.0, "throughput": 700.0, "observation_p99_s": 0.1}]
    assert tune.recommend(rows)["workers_per_core"] == 0.5  # within 5 % of the best: lower p99 wins


def test_tune_prints_a_table_and_writes_a_config_run_accepts(tmp_path, engine_factory):
    out = tmp_path / "tuned.toml"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-m", "engine", "tune", "--dim", "16", "--seconds", "5", "--write",
                          str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["workers/core", "workers", "throughput"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["0.5", "1"]
    assert "recommended: --workers-per-core" in run.stdout and "step" in run.stderr
    written = tomllib.loads(out.read_text())
    assert written["dim"] == 16 and written["workers"] == "auto"
    ep = engine_factory(config=str(out), workers="auto", grpc_addr="off")
    st = ep.status()
    assert st["dim"] == 16 and st["state"] == "running"
    assert len(st["workers"]) == max(1, round(len(tune.usable_cpus()) * written["workers-per-core"]))
