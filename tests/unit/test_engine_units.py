"""Fast tests of the engine's policies: no processes, injected clocks."""

from __future__ import annotations

import argparse
import asyncio
import inspect

import hnswlib
import numpy as np
import pytest

from engine import config
from engine.control import admission
from engine.errors import ConfigError, InvalidInput
from engine.distances import exact_distances
from engine.producer.recall import merge
from engine.producer.routing import home_slot, spill_order
from engine.worker.scheduler import BatchSizer, LaneScheduler
from engine.producer import validation


# -- admission / backpressure ------------------------------------------------
def test_states_rise_at_thresholds():
    s = admission.NORMAL
    for p, expect in [(0.49, 0), (0.5, 1), (0.79, 1), (0.8, 2), (0.94, 2), (0.95, 3), (1.0, 3)]:
        s = admission.next_state(s, p)
        assert s == expect, p


def test_hysteresis_on_the_way_down():
    s = admission.next_state(admission.NORMAL, 0.96)
    assert s == admission.OVERLOADED
    assert admission.next_state(s, 0.90) == admission.OVERLOADED  # below enter, above leave
    assert admission.next_state(s, 0.84) == admission.CRITICAL
    assert admission.next_state(admission.CRITICAL, 0.75) == admission.CRITICAL
    assert admission.next_state(admission.CRITICAL, 0.45) == admission.WARNING
    assert admission.next_state(admission.WARNING, 0.41) == admission.WARNING
    assert admission.next_state(admission.WARNING, 0.39) == admission.NORMAL
    assert admission.next_state(admission.OVERLOADED, 0.0) == admission.NORMAL


def test_no_flapping_around_a_boundary():
    s, changes = admission.NORMAL, 0
    for p in [0.49, 0.51, 0.48, 0.52, 0.47, 0.5, 0.45] * 10:
        new = admission.next_state(s, p)
        changes += new != s
        s = new
    assert changes == 1 and s == admission.WARNING


def test_admission_by_priority():
    assert admission.admits("low", admission.WARNING)
    assert not admission.admits("low", admission.CRITICAL)
    assert admission.admits("normal", admission.CRITICAL)
    assert not admission.admits("normal", admission.OVERLOADED)
    assert admission.admits("high", admission.OVERLOADED)


# -- scheduler ---------------------------------------------------------------
def test_strict_priority_without_starvation():
    sched = LaneScheduler()
    served = []
    depths = [1000, 1000, 1000]
    for _ in range(170):
        lane = sched.order(depths)[0]
        sched.served(lane, depths)
        served.append(lane)
    assert served[:4] == [0, 0, 0, 0]
    assert served.count(1) >= 170 // 5 - 1
    assert served.count(2) >= 170 // 17 - 1
    assert served.count(0) > served.count(1) > served.count(2)
    # No lane with work waits more than its patience (+ one turn of a starving peer).
    for lane, patience in ((1, 4), (2, 16)):
        gaps = np.diff([i for i, s in enumerate(served) if s == lane])
        assert gaps.max() <= patience + 2, (lane, gaps.max())


def test_empty_lanes_are_not_offered_and_do_not_accumulate_debt():
    sched = LaneScheduler()
    for _ in range(50):
        assert sched.order([5, 0, 0]) == [0]
        sched.served(0, [5, 0, 0])
    assert sched.order([5, 5, 0]) == [0, 1]  # low had no work: no debt, normal had none either


def test_batch_sizer_fits_the_budget():
    sizer = BatchSizer(10, 1000, budget_s=0.05)
    assert sizer.size(5000) == 10  # nothing measured yet: start small
    sizer.record(100, 0.01)  # 100 µs per item → 500 fit in 50 ms
    assert sizer.size(5000) == 500
    assert sizer.size(30) == 30  # never more than is queued
    for _ in range(50):
        sizer.record(10, 1.0)  # very slow items
    assert sizer.size(5000) == 10  # clamped at batch_min
    fast = BatchSizer(10, 1000, budget_s=0.05)
    fast.record(1000, 0.0001)
    assert fast.size(5000) == 1000  # clamped at batch_max


# -- routing -----------------------------------------------------------------
def test_home_slot_is_stable_and_spread():
    assert home_slot("docs", 16) == home_slot("docs", 16)
    homes = {home_slot(f"space-{i}", 8) for i in range(200)}
    assert homes == set(range(8))


def test_spill_order_home_first_then_most_free():
    assert spill_order(2, [5, 0, 1, 9]) == [2, 3, 0]


# -- recall merge ------------------------------------------------------------
def test_merge_dedupes_and_keeps_smallest_distance():
    a = (np.array([[1, 2, 3]], np.uint64), np.array([[0.1, 0.5, 0.9]], np.float32))
    b = (np.array([[2, 4]], np.uint64), np.array([[0.2, 0.3]], np.float32))
    ids, dist = merge([a, b], 1, 3)
    assert ids.tolist() == [[1, 2, 4]]
    assert np.allclose(dist, [[0.1, 0.2, 0.3]])


def test_merge_of_nothing_is_empty():
    ids, dist = merge([], 2, 5)
    assert ids.shape == (2, 0) and dist.shape == (2, 0)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_distances_match_hnswlib(metric):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((200, 12)).astype(np.float32)
    queries = rng.standard_normal((5, 12)).astype(np.float32)
    index = hnswlib.Index(space=metric, dim=12)
    index.init_index(max_elements=200, M=16, ef_construction=200)
    index.add_items(data, np.arange(200))
    index.set_ef(200)
    labels, hd = index.knn_query(queries, k=3)
    ours = exact_distances(queries, data, metric)
    assert np.allclose(np.take_along_axis(ours, labels.astype(np.int64), axis=1), hd, atol=1e-4)


# -- validation --------------------------------------------------------------
def test_validation_accepts_float64_and_scalar_id():
    v = validation.vectors(np.ones(8), 1, 8, "l2")
    assert v.dtype == np.float32 and v.shape == (1, 8) and v.flags.c_contiguous
    assert validation.ids(5, 10).tolist() == [5]
    assert validation.ids([2 ** 64 - 1], 10).dtype == np.uint64


@pytest.mark.parametrize("bad", [[-1], [2 ** 64], [1.5], [[1, 2]], [], ["x"]])
def test_validation_rejects_bad_ids(bad):
    with pytest.raises(InvalidInput):
        validation.ids(bad, 10)


def test_validation_messages_name_the_problem():
    with pytest.raises(InvalidInput, match=r"shape \(2, 8\)"):
        validation.vectors(np.ones((2, 9)), 2, 8, "l2")
    with pytest.raises(InvalidInput, match="vector 1 contains NaN"):
        validation.vectors(np.array([[1.0] * 8, [np.nan] * 8]), 2, 8, "l2")
    with pytest.raises(InvalidInput, match="max-batch-size=3"):
        validation.ids([1, 2, 3, 4], 3)
    with pytest.raises(InvalidInput, match="memory space"):
        validation.space_name("UPPER")



def test_quoted_input_is_cut_to_80_chars_with_its_length():
    from engine.errors import shown
    assert shown("abc") == "'abc'" and shown(7) == "7"
    long = shown("x" * 1_000_000)
    assert long.startswith("'xxx") and long.endswith("… (1000000 chars)") and len(long) < 100
    assert shown(b"\0" * 500).endswith("(500 bytes)")
    assert shown(list(range(1000))).endswith(f"({len(repr(list(range(1000))))} chars)")
    with pytest.raises(InvalidInput) as info:
        validation.space_name("q" * 100_000)
    assert len(str(info.value)) < 200 and "(100000 chars)" in str(info.value)
    with pytest.raises(InvalidInput) as info:
        validation.top_k(list(range(100_000)), 10)
    assert len(str(info.value)) < 200
    with pytest.raises(ConfigError) as cerr:
        config.resolve(_args("recall", space="s" * 100_000), "recall", env={})
    assert len(str(cerr.value)) < 300 and "(100000 chars)" in str(cerr.value)


BAD_SPACES = ["a" * 64 + "\n", "abc\n", "abc\r", "ab\rc", "\nabc", "abc\r\n", "abc\x00", "caf\u00e9",
              "\uff41bc", "\u0430bc", "a" * 65, "ab", "", "ABC", "ab c", None, b"abc", 123]


@pytest.mark.parametrize("bad", BAD_SPACES, ids=repr)
def test_space_names_must_match_the_whole_string(bad):
    assert not config.valid_space(bad)
    with pytest.raises(InvalidInput, match="must match"):
        validation.space_name(bad)


@pytest.mark.parametrize("good", ["abc", "a" * 64, "a-b_c", "default", "0_9", "---"])
def test_valid_space_names(good):
    assert config.valid_space(good) and validation.space_name(good) == good


def test_the_space_registry_stores_no_invalid_name():
    from types import SimpleNamespace
    from engine.control.spaces import SpaceRegistry
    # refused before the control block is touched: this stand-in has none
    reg = SpaceRegistry(SimpleNamespace(params=SimpleNamespace(max_spaces=4)))
    for bad in ("a" * 64 + "\n", "a" * 65, "x\r"):
        with pytest.raises(InvalidInput, match="must match"):
            reg.register(bad)



# -- one recall signature, local and remote ----------------------------------
def _recall_params(fn) -> list[tuple]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in ("self", "timeout")]


def test_recall_signature_is_the_same_locally_and_remotely():
    from engine.client import AsyncClient, Client
    from engine.producer.api import Engine
    local = _recall_params(Engine.recall)
    assert local == _recall_params(Client.recall) == _recall_params(AsyncClient.recall)
    kinds = {name: kind for name, kind, _ in local}
    assert kinds["k"] == inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert kinds["ef"] == kinds["fresh"] == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("extra", [(64,), (64, True), (True,)])
def test_positional_ef_or_fresh_is_a_type_error_locally(extra):
    from engine.producer.api import Engine
    # the arguments are bound before the body runs: no engine is needed to see it
    with pytest.raises(TypeError, match="positional"):
        Engine.recall(None, "space", np.ones(4, np.float32), 10, *extra)


@pytest.mark.parametrize("extra", [(64,), (64, True), (True,)])
def test_positional_ef_or_fresh_is_a_type_error_remotely(extra):
    from engine.client import AsyncClient, Client
    q = np.ones(4, np.float32)
    # nothing listens on port 9; a call that got as far as the wire would fail
    # with GatewayError(UNAVAILABLE) after its short retry budget instead
    with Client("127.0.0.1:9", retry_timeout=0.1, timeout=0.5) as c:
        with pytest.raises(TypeError, match="positional"):
            c.recall("space", q, 10, *extra)

    async def remote():
        async with AsyncClient("127.0.0.1:9", retry_timeout=0.1, timeout=0.5) as c:
            with pytest.raises(TypeError, match="positional"):
                await c.recall("space", q, 10, *extra)

    asyncio.run(remote())


# -- configuration -----------------------------------------------------------
def _args(command="run", **kw):
    ns = argparse.Namespace(config_file=None)
    for s in config.SETTINGS:
        setattr(ns, s.attr, None)
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_precedence_cli_over_env_over_toml_over_default(tmp_path):
    toml = tmp_path / "engram.toml"
    toml.write_text('dim = 64\nmetric = "l2"\nbatch-max = 500\nsteal_threshold = 7\n')
    cfg = config.resolve(_args(config_file=str(toml), dim="32"), "run",
                         env={"ENGRAM_DIM": "48", "ENGRAM_METRIC": "ip"})
    assert cfg.dim == 32 and cfg.metric == "ip" and cfg.batch_max == 500 and cfg.steal_threshold == 7
    assert cfg.hnsw_m == 16  # default


@pytest.mark.parametrize("flag,value,fragment", [
    ("dim", "0", "--dim='0'"), ("workers", "many", "--workers='many'"),
    ("cpus", "3-1", "--cpus='3-1'"), ("metrics_addr", "nowhere", "--metrics-addr='nowhere'"),
    ("metric", "hamming", "--metric='hamming'"),
])
def test_bad_values_name_flag_and_value(flag, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        config.resolve(_args(**{flag: value}), "run", env={})


def test_recall_space_flag_is_checked_whole():
    assert config.resolve(_args("recall", space="a" * 64), "recall", env={}).space == "a" * 64
    for bad in ("a" * 64 + "\n", "abc\r", "ab"):
        with pytest.raises(ConfigError, match="--space"):
            config.resolve(_args("recall", space=bad), "recall", env={})
    with pytest.raises(ConfigError, match="--name"):
        config.resolve(_args(name="engram\n"), "run", env={})


def test_unknown_toml_key_and_cross_checks(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("dimension = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        config.resolve(_args(config_file=str(toml)), "run", env={})
    with pytest.raises(ConfigError, match="--batch-min=50 is larger than --batch-max=10"):
        config.resolve(_args(batch_min="50", batch_max="10"), "run", env={})


def test_cpu_list_and_workers_auto():
    cfg = config.resolve(_args(cpus="0-2,5", workers="auto"), "run", env={})
    assert cfg.cpus == (0, 1, 2, 5) and cfg.workers == "auto"


def test_docs_table_lists_every_setting():
    table = config.render_markdown()
    for s in config.SETTINGS:
        assert f"`{s.flag}`" in table and s.env in table


# ---------------------------------------------------------------- drain rate and retry-after
def test_retry_after_from_drain_rate():
    from engine.control import admission
    from engine.gateway.drain import MAX_RETRY_S, MIN_RETRY_S, UNKNOWN_RATE_RETRY_S, retry_after_s
    cap = 10_000
    # below critical and nothing refused: no hint
    assert retry_after_s(admission.WARNING, "normal", 6000, cap, 1000.0) == 0.0
    # critical: normal is admitted but told how long until critical is left (0.70)
    assert retry_after_s(admission.CRITICAL, "normal", 8500, cap, 1000.0) == pytest.approx(1.5)
    # low is refused from critical: same level, critical left below 0.70
    assert retry_after_s(admission.CRITICAL, "low", 9000, cap, 1000.0) == pytest.approx(2.0)
    # overloaded refuses normal until it is left below 0.85
    assert retry_after_s(admission.OVERLOADED, "normal", 9600, cap, 1000.0) == pytest.approx(1.1)
    assert retry_after_s(admission.OVERLOADED, "normal", 9600, cap, 0.0) == UNKNOWN_RATE_RETRY_S
    assert retry_after_s(admission.OVERLOADED, "normal", 9600, cap, 1e9) == MIN_RETRY_S
    assert retry_after_s(admission.OVERLOADED, "normal", 9600, cap, 1e-3) == MAX_RETRY_S
    # a full high lane below critical: the rejected part at the drain rate
    assert retry_after_s(admission.NORMAL, "high", 100, cap, 100.0, lane_rejected=50) == pytest.approx(0.5)


def test_drain_meter_follows_committed_positions():
    from engine.gateway.drain import DrainMeter

    class FakeRing:
        tail = 0

    rings, now = [FakeRing(), FakeRing()], [0.0]
    meter = DrainMeter(rings, clock=lambda: now[0])
    for _ in range(40):  # 1000 committed per second, split over two rings
        now[0] += 0.1
        rings[0].tail += 60
        rings[1].tail += 40
        meter.sample()
    assert meter.rate == pytest.approx(1000.0, rel=0.01)
    for _ in range(60):  # nothing drains: the rate decays toward 0
        now[0] += 0.1
        meter.sample()
    assert meter.rate < 100.0
