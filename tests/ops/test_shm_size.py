"""scripts/shm_size.py prints exactly the figure the supervisor's /dev/shm check uses."""

from __future__ import annotations

import os
import re

import pytest

from tests.deploy_helpers import ROOT, shm_figure, shm_size
from engine.config import Params, resolve
from engine.control.layouts import required_bytes
from engine.errors import ConfigError
from engine.supervisor import preflight


def params_for(env: dict[str, str], toml_path: str | None = None) -> Params:
    cfg = resolve(None, "run", env=env, toml_path=toml_path)
    slots, cpus = preflight.plan_cpus(cfg)
    return preflight.instance_params(cfg, slots, cpus)


class _StatVFS:
    def __init__(self, free: int):
        self.f_bavail, self.f_frsize = free, 1


@pytest.mark.parametrize("env", [
    {"ENGRAM_WORKERS": "4"},
    {"ENGRAM_WORKERS": "2", "ENGRAM_DIM": "16", "ENGRAM_CAPACITY_NORMAL": "20000"},
])
def test_the_figure_is_the_start_up_threshold(env, tmp_path, monkeypatch):
    need, _ = shm_figure(env=env)
    params = params_for(env)
    assert need == required_bytes(params)
    # check_shm_room accepts a /dev/shm with exactly that much free, and refuses one byte less.
    monkeypatch.setattr(preflight.os, "statvfs", lambda path: _StatVFS(need))
    preflight.check_shm_room(params, str(tmp_path))
    monkeypatch.setattr(preflight.os, "statvfs", lambda path: _StatVFS(need - 1))
    with pytest.raises(ConfigError, match="needs"):
        preflight.check_shm_room(params, str(tmp_path))


def test_sources_and_precedence_are_those_of_run(tmp_path):
    toml = tmp_path / "engram.toml"
    toml.write_text('workers = 2\ndim = 64\ncapacity-normal = 1000\n')
    from_toml, _ = shm_figure("--config", str(toml))
    assert from_toml == required_bytes(params_for({}, str(toml)))
    # environment beats the file, a flag beats the environment
    from_env, _ = shm_figure("--config", str(toml), env={"ENGRAM_DIM": "128"})
    from_flag, _ = shm_figure("--config", str(toml), "--dim", "256", env={"ENGRAM_DIM": "128"})
    assert from_toml < from_env < from_flag
    assert from_flag == required_bytes(params_for({"ENGRAM_DIM": "256"}, str(toml)))


def test_suggestion_has_headroom_in_whole_64_mib_steps():
    for env in ({"ENGRAM_WORKERS": "4"}, {"ENGRAM_WORKERS": "1", "ENGRAM_DIM": "8"}):
        need, suggested = shm_figure(env=env)
        assert suggested >= 1.25 * need and suggested % (64 * 2**20) == 0
        assert suggested - 64 * 2**20 < 1.25 * need


def test_bad_settings_and_auto_workers_are_reported():
    out = shm_size("--dim", "0")
    assert out.returncode == 2 and "--dim" in out.stderr and out.stdout == ""
    out = shm_size("--workers", "auto")
    assert out.returncode == 0 and f"is {len(os.sched_getaffinity(0))} on this host" in out.stderr


def test_the_table_in_the_operations_guide_is_current():
    text = (ROOT / "docs/operations.md").read_text()
    table = text.split("<!-- shm figures: tests/ops/test_shm_size.py checks this table -->\n", 1)[1].split("\n\n")[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([0-9,]+) \| ([0-9]+Mi) \|$", table, re.M)
    assert len(rows) >= 3 and len(rows) == len(table.splitlines()) - 2
    for flags, need, suggest in rows:
        assert shm_size(*flags.split()).stdout.strip() == need.replace(",", ""), flags
        assert shm_size(*flags.split(), "--suggest").stdout.strip() == suggest, flags
