"""``engram-stream forget`` without an engine: where ids come from, how
they are split into calls and how the results add up (a fake engine with an
injected clock), and the exit codes of refusals the command line makes itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine import config
from engine.cli import forget
from engine.cli.main import main
from engine.errors import ConfigError
from engine.results import ForgetResult
from tests.harness import ROOT, child_env


def cfg_of(*argv: str):
    from engine.cli.main import build_parser
    return config.resolve(build_parser().parse_args(["forget", *argv]), "forget", env={})


def test_ids_come_from_the_flag_and_the_file_in_that_order(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("7\n8 9\n\n10,11\n18446744073709551615\n")
    got = forget.read_ids(cfg_of("--ids", "1,2, 3", "--ids-file", str(path)))
    assert got.dtype == np.uint64 and got.tolist() == [1, 2, 3, 7, 8, 9, 10, 11, 2 ** 64 - 1]
    assert forget.read_ids(cfg_of("--ids-file", str(path))).tolist()[0] == 7


@pytest.mark.parametrize("text, wrong", [("1\n-2\n", "'-2'"), ("3 x", "'x'"), ("18446744073709551616", "2**64")])
def test_a_bad_id_in_the_file_is_named(tmp_path, text, wrong):
    path = tmp_path / "ids.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match="--ids-file=") as err:
        forget.read_ids(cfg_of("--ids-file", str(path)))
    assert wrong in str(err.value)


def test_no_ids_or_an_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="forget needs ids"):
        forget.read_ids(cfg_of())
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="holds none"):
        forget.read_ids(cfg_of("--ids-file", str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="No such file"):
        forget.read_ids(cfg_of("--ids-file", str(tmp_path / "missing")))


def test_ids_from_the_environment_and_toml(tmp_path):
    cfg = config.resolve(None, "forget", env={"ENGRAM_IDS": "4,5"})
    assert cfg.ids == (4, 5)
    toml = tmp_path / "f.toml"
    toml.write_text("ids = [6, 7]\nwait = 0\n")
    cfg = config.resolve(None, "forget", env={}, toml_path=str(toml))
    assert cfg.ids == (6, 7) and cfg.wait == 0.0


class Params:
    max_batch_size = 3


class FakeEngine:
    """Accepts ``room`` ids in all, then refuses over_capacity; one tick of the clock per call."""

    def __init__(self, room: int = 100, applied: bool = True):
        self.params = Params()
        self.room, self.applied = room, applied
        self.calls: list[tuple[list[int], bool, float]] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def forget(self, space, ids, wait=True, timeout=10.0):
        self.calls.append((list(map(int, ids)), wait, timeout))
        self.now += 1.0
        n = min(len(ids), self.room)
        self.room -= n
        rejected = {"over_capacity": len(ids) - n} if n < len(ids) else {}
        return ForgetResult(n, int(sum(int(i) >= 100 for i in ids[:n])), rejected, "normal",
                            wait and self.applied, "high lane full" if rejected else "")


def test_calls_of_at_most_max_batch_size_share_one_wait():
    eng = FakeEngine()
    res = forget.forget_all(eng, "sp", np.array([1, 2, 3, 4, 100, 101, 5], np.uint64), 10.0, eng.clock)
    assert [c[0] for c in eng.calls] == [[1, 2, 3], [4, 100, 101], [5]]
    assert [c[2] for c in eng.calls] == [10.0, 9.0, 8.0] and all(c[1] for c in eng.calls)
    assert (res.accepted, res.not_found, res.rejected, res.applied) == (7, 2, {}, True)


def test_a_refusal_stops_the_calls_and_counts_the_rest_refused():
    eng = FakeEngine(room=4)
    res = forget.forget_all(eng, "sp", np.arange(8, dtype=np.uint64), 5.0, eng.clock)
    assert len(eng.calls) == 2
    assert (res.accepted, res.rejected, res.message) == (4, {"over_capacity": 4}, "high lane full")


def test_no_wait_and_not_applied():
    eng = FakeEngine()
    res = forget.forget_all(eng, "sp", np.arange(2, dtype=np.uint64), 0.0, eng.clock)
    assert eng.calls[0][1] is False and res.applied is False and res.accepted == 2
    eng = FakeEngine(applied=False)
    assert forget.forget_all(eng, "sp", np.arange(5, dtype=np.uint64), 3.0, eng.clock).applied is False


def test_exit_codes_of_refusals_made_before_any_engine_is_asked(capsys):
    assert main(["forget", "--ids", "1,x"]) == 2
    assert "'x' is not an id" in capsys.readouterr().err
    assert main(["forget", "--space", "Bad Space", "--ids", "1"]) == 2
    assert main(["forget", "--ids", "1", "--name", "nosuchinstance"]) == 1
    assert "no running engram instance" in capsys.readouterr().err


def test_both_entry_points_know_the_command():
    # the console script runs this checkout too: child_env puts it first on PYTHONPATH
    for argv in ([sys.executable, "-m", "engine", "forget", "--help"], ["engram-stream", "forget", "--help"]):
        out = subprocess.run(argv, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=60)
        assert out.returncode == 0 and "--ids-file" in out.stdout, (argv, out.stderr)
