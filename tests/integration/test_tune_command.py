"""``engram-stream tune`` on this host: the table, a recommendation, a config that ``run`` accepts."""

from __future__ import annotations

import io
import os
import re
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


ROW = {"workers_per_core": 0.5, "workers": 1, "throughput": 5210.4, "observation_p99_s": 0.0412,
       "recall_p99_s": None, "cpu_use": 0.876}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_a_terminal_is_one_line_per_finished_step():
    err = io.StringIO()
    shown = tune.Progress(err, 2)
    for frac in (0.0, 0.3, 0.6, 1.0):
        shown.running(0, 0.5, frac)
    shown.finished(0, ROW)
    shown.running(1, 1.0, 0.5)
    assert err.getvalue() == ("step 1/2: 0.5 per core (1 worker): 5210/s, obs p99 41.2 ms, recall p99 -, "
                              "cpu use 88%\n")


def test_progress_on_a_terminal_redraws_a_bar_then_shows_the_figures():
    err = Terminal()
    shown = tune.Progress(err, 2)
    for frac in (0.0, 0.01, 0.5, 1.0):
        shown.running(0, 0.5, frac)
    shown.finished(0, ROW)
    text = err.getvalue()
    bars = re.findall(r"\r\[([#.]{30})\] step 1/2: 0\.5 per core", text)
    assert bars == ["." * 30, "#" * 7 + "." * 23, "#" * 15 + "." * 15]  # 0.01 changes no cell: not redrawn
    assert text.endswith("\r\x1b[K" + tune.step_line(0, 2, ROW) + "\n") and text.count("\n") == 1


def test_tune_prints_a_table_and_writes_a_config_run_accepts(tmp_path, engine_factory):
    out = tmp_path / "tuned.toml"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-m", "engine", "tune", "--dim", "16", "--seconds", "5", "--write",
                          str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["workers/core", "workers", "throughput"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["0.5", "1"]
    assert "recommended: --workers-per-core" in run.stdout
    # stderr is a pipe: the plan, then one line per finished step with the figures of its table row
    progress = run.stderr.splitlines()
    assert progress[0].startswith("tune: ") and "\r" not in run.stderr
    assert not any("#" in ln or "[" in ln for ln in progress[1:]), run.stderr  # no bar
    rows = [ln for ln in lines[1:] if ln and ln.split()[0][0].isdigit()]
    assert len(progress) == 1 + len(rows) >= 3, run.stderr
    for i, (step, row) in enumerate(zip(progress[1:], rows)):
        wpc, workers, rate = row.split()[:3]
        assert step.startswith(f"step {i + 1}/{len(rows)}: {wpc} per core ({workers} worker"), step
        assert f": {rate}, obs p99 " in step and "recall p99 " in step and "cpu use " in step, step
    written = tomllib.loads(out.read_text())
    assert written["dim"] == 16 and written["workers"] == "auto"
    ep = engine_factory(config=str(out), workers="auto", grpc_addr="off")
    st = ep.status()
    assert st["dim"] == 16 and st["state"] == "running"
    assert len(st["workers"]) == max(1, round(len(tune.usable_cpus()) * written["workers-per-core"]))
