"""The declarations that several places derive from stay in step: one list of
commands, the ``run`` settings and the ``Params`` every process reads."""

from __future__ import annotations

import dataclasses

from engine import config
from engine.cli import main as cli
from engine.config import Params


def test_every_command_has_a_handler_and_every_setting_a_command():
    assert set(cli.HANDLERS) == set(config.COMMANDS)
    for s in config.SETTINGS:
        assert set(s.commands) <= set(config.COMMANDS), (s.name, s.commands)
    assert len({s.name for s in config.SETTINGS}) == len(config.SETTINGS)  # each declared once


def test_params_carry_every_run_setting_and_round_trip():
    run = {s.attr for s in config.SETTINGS if "run" in s.commands}
    fields = {f.name for f in dataclasses.fields(Params)}
    assert run <= fields, sorted(run - fields)
    assert fields - run == {"slots", "slot_cpus", "capacity", "pinned"}, sorted(fields - run)  # derived ones
    cfg = config.resolve(None, "run", env={"ENGRAM_CPUS": "0-1", "ENGRAM_DIM": "32"})
    p = Params.plan(cfg, 2, [0, 1])
    assert p.cpus == (0, 1) and p.capacity == (cfg.capacity_high, cfg.capacity_normal, cfg.capacity_low)
    assert Params.from_json(p.to_json()) == p
    try:
        p.dim = 8
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("Params must be frozen")
