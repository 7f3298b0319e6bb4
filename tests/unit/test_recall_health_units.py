"""Recall health policy without processes: breaker, probe hysteresis, tuner (injected clocks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.control.layouts import BREAKER_RING_BYTES
from engine.control.records import (CLOSED, HALF_OPEN, OPEN, OVERRIDE_AUTO, OVERRIDE_CLOSED, OVERRIDE_OPEN,
                                    PROBE_DEGRADED, PROBE_HEALTHY, PROBE_UNHEALTHY, PROBE_UNKNOWN, PRODUCER,
                                    BreakerRecord, ControlWriteError)
from engine.recallhealth import breaker, probe
from engine.recallhealth.breaker import BreakerPolicy
from engine.recallhealth.probeset import ProbeSet, ProbeShard
from engine.recallhealth.tuner import Evidence, Guardrails, Tuner

POLICY = BreakerPolicy(window=50, min_samples=20, max_failure_rate=0.05, cool_down_s=30.0, trials=5)


class Slot:
    """One breaker row and ring in plain memory, written as a producer."""

    def __init__(self):
        self.rec = BreakerRecord(np.zeros(8), PRODUCER)
        self.ring = np.zeros(BREAKER_RING_BYTES, np.uint8)
        self.moves = []

    def admit(self, now):
        ok, t = breaker.admit(0, self.rec, POLICY, now)
        if t:
            self.moves.append((t.old, t.new))
        return ok

    def record(self, failed, now):
        t = breaker.record(0, self.rec, self.ring, POLICY, failed, now, "timeout" if failed else "")
        if t:
            self.moves.append((t.old, t.new))


def opened(now=0.0) -> Slot:
    s = Slot()
    for i in range(19):
        s.record(False, now)
    s.record(True, now)  # 1 of 20 = 5 %: not above the limit
    assert int(s.rec.state) == CLOSED
    s.record(True, now)  # 2 of 21 > 5 %
    assert int(s.rec.state) == OPEN
    return s


# -- breaker -----------------------------------------------------------------
def test_breaker_needs_the_minimum_sample_count():
    s = Slot()
    for _ in range(POLICY.min_samples - 1):
        s.record(True, 0.0)  # every one a failure, but fewer than 20
    assert int(s.rec.state) == CLOSED and s.admit(0.0)
    s.record(True, 0.0)
    assert int(s.rec.state) == OPEN and s.moves == [(CLOSED, OPEN)]


def test_breaker_opens_above_five_percent_and_short_circuits():
    s = opened(now=100.0)
    assert not s.admit(100.0) and not s.admit(129.9)
    s.record(False, 101.0)  # a late answer while open changes nothing
    assert int(s.rec.state) == OPEN


def test_breaker_window_forgets_old_failures():
    s = Slot()
    s.record(True, 0.0)
    for _ in range(60):  # the failure leaves the 50-outcome window
        s.record(False, 0.0)
    assert int(s.rec.failures) == 0 and int(s.rec.samples) == 50
    s.record(True, 0.0)
    s.record(True, 0.0)
    assert int(s.rec.state) == CLOSED  # 2 of 50 = 4 %
    s.record(True, 0.0)
    assert int(s.rec.state) == OPEN    # 3 of 50 = 6 %


def test_cool_down_half_open_trials_then_success_closes():
    s = opened(now=0.0)
    assert not s.admit(29.0)
    assert s.admit(30.0) and int(s.rec.state) == HALF_OPEN
    assert all(s.admit(30.5) for _ in range(POLICY.trials - 1))
    assert not s.admit(31.0)  # the five trials are out
    s.record(False, 31.0)
    assert int(s.rec.state) == CLOSED and int(s.rec.samples) == 0
    assert s.moves == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_half_open_failure_reopens_and_restarts_the_cool_down():
    s = opened(now=0.0)
    assert s.admit(30.0)
    s.record(True, 31.0)
    assert int(s.rec.state) == OPEN
    assert not s.admit(60.0) and s.admit(61.0)
    assert s.moves[-2:] == [(HALF_OPEN, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_trials_lost_with_their_requester_are_given_back():
    s = opened(now=0.0)
    for _ in range(POLICY.trials):
        assert s.admit(30.0)
    assert not s.admit(59.0)
    assert s.admit(60.0)  # another cool-down without an outcome: new trials


def test_override_wins_until_auto():
    s = Slot()
    breaker.set_override(s.rec, OVERRIDE_OPEN)
    assert not s.admit(0.0)
    s = opened()
    breaker.set_override(s.rec, OVERRIDE_CLOSED)
    assert s.admit(1.0)
    breaker.set_override(s.rec, OVERRIDE_AUTO)
    assert not s.admit(1.0)


def test_breaker_record_is_not_writable_by_a_reader():
    rec = BreakerRecord(np.zeros(8), "exporter")
    with pytest.raises(ControlWriteError):
        rec.state = OPEN


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=300))
def test_breaker_invariants_under_any_sequence(events):
    s = Slot()
    now = 0.0
    for failed, dt in events:
        now += dt
        if s.admit(now):
            s.record(failed, now)
        state = int(s.rec.state)
        assert state in (CLOSED, HALF_OPEN, OPEN)
        assert 0 <= int(s.rec.failures) <= int(s.rec.samples) <= POLICY.window
        assert int(s.rec.failures) == int(s.ring[:POLICY.window].sum())
        if state == HALF_OPEN:
            assert int(s.rec.trials) <= POLICY.trials
    for old, new in s.moves:
        assert (old, new) in {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}


# -- probe -------------------------------------------------------------------
def run_probe(outcomes, start=probe.ProbeState()):
    states, s = [], start
    for ok in outcomes:
        s = probe.step(s, ok)
        states.append(s.state)
    return states


def test_probe_hysteresis():
    assert run_probe([True]) == [PROBE_HEALTHY]
    assert run_probe([True, False, False, False]) == [PROBE_HEALTHY, PROBE_HEALTHY, PROBE_DEGRADED,
                                                     PROBE_UNHEALTHY]
    # one success is not enough to come back; two are
    tail = run_probe([True, False, False, False, True, False, True, True])
    assert tail[4:] == [PROBE_UNHEALTHY, PROBE_UNHEALTHY, PROBE_UNHEALTHY, PROBE_HEALTHY]
    assert run_probe([False]) == [PROBE_UNKNOWN]
    assert run_probe([False, False]) == [PROBE_UNKNOWN, PROBE_DEGRADED]


@given(st.lists(st.booleans(), max_size=100))
def test_probe_state_follows_the_counts(outcomes):
    s = probe.ProbeState()
    for ok in outcomes:
        s = probe.step(s, ok)
        assert (s.failures == 0) or (s.successes == 0)
        if s.failures >= 3:
            assert s.state == PROBE_UNHEALTHY
        if s.successes >= 2:
            assert s.state == PROBE_HEALTHY


def test_probe_set_is_deterministic_and_checks_answers():
    a, b = ProbeSet.build(16, "cosine"), ProbeSet.build(16, "cosine")
    assert (a.vectors == b.vectors).all() and (a.expected == b.expected).all()
    good = ProbeShard(16, "cosine", 16, 200)
    ids, _ = good.search(a.queries, a.expected.shape[1])
    assert a.check(ids)
    bad = ProbeShard(16, "cosine", 16, 200, _corrupt=True)
    ids, _ = bad.search(a.queries, a.expected.shape[1])
    assert not a.check(ids)


# -- tuner -------------------------------------------------------------------
LIGHT = Evidence(latency_s=0.08, wait_s=0.02, utilization=0.3, item_s=0.0001, batch_items=500,
                 idle_with_work=0.0, steal_share=0.0)


def test_tuner_halves_a_binding_budget_under_light_load_once_per_interval():
    t = Tuner(50.0, 1000, interval_s=300.0)
    t.observe(LIGHT)
    changes = t.step(1000.0)
    budget = [c for c in changes if c.setting == "batch_budget_ms"]
    assert budget and budget[0].old == 50.0 and budget[0].new == 25.0 and budget[0].gain > 0.10
    assert not [c for c in t.step(1299.0) if c.setting == "batch_budget_ms"]
    assert [c for c in t.step(1300.0) if c.setting == "batch_budget_ms"]


def test_tuner_keeps_the_budget_when_batches_do_not_fill_it():
    t = Tuner(50.0, 1000)
    t.observe(Evidence(latency_s=0.005, wait_s=0.001, utilization=0.1, item_s=0.0001, batch_items=20))
    assert not [c for c in t.step(1000.0) if c.setting == "batch_budget_ms"]


def test_tuner_ten_percent_rule():
    saturated = dict(latency_s=1.0, wait_s=0.9, utilization=0.95, item_s=0.0001, batch_items=500)
    # 50 -> 100 ms saves ~1 % of capacity, which at 95 % utilisation is ~15 % of the queueing delay.
    t = Tuner(50.0, 1000)
    t.observe(Evidence(**saturated))
    [c] = [c for c in t.step(1000.0) if c.setting == "batch_budget_ms"]
    assert c.new == 100.0 and 0.10 < c.gain < 0.2
    # 100 -> 200 ms is predicted to gain under 10 %: no change.
    t = Tuner(100.0, 1000)
    t.observe(Evidence(**saturated))
    assert not [c for c in t.step(1000.0) if c.setting == "batch_budget_ms"]


def test_tuner_steal_threshold_scales_with_insert_cost_and_needs_idle_evidence():
    t = Tuner(50.0, 1000)
    t.observe(Evidence(item_s=0.001, idle_with_work=0.4, utilization=0.5))
    [c] = [c for c in t.step(1000.0) if c.setting == "steal_threshold"]
    assert c.new == 100 and t.steal == 100  # 2 x 50 ms / 1 ms per item
    t = Tuner(50.0, 1000)
    t.observe(Evidence(item_s=0.001, idle_with_work=0.0, utilization=0.5))
    assert not t.step(1000.0)  # nobody idle: no reason to steal sooner


def test_pinned_settings_never_change():
    t = Tuner(50.0, 1000, pinned=("batch_budget_ms", "steal_threshold"))
    t.observe(LIGHT)
    t.observe(Evidence(idle_with_work=0.9))
    assert t.step(1000.0) == [] and t.budget_ms == 50.0 and t.steal == 1000


evidence = st.builds(Evidence, latency_s=st.floats(1e-4, 10), wait_s=st.floats(0, 10),
                     utilization=st.floats(0, 1), item_s=st.floats(1e-7, 0.1),
                     batch_items=st.floats(1, 1000), idle_with_work=st.floats(0, 1),
                     steal_share=st.floats(0, 1))


@settings(max_examples=150, deadline=None)
@given(st.floats(5, 200), st.integers(16, 100_000), st.floats(1, 1000),
       st.lists(st.tuples(evidence, st.floats(0, 400)), max_size=40))
def test_tuner_stays_in_the_guardrails_and_changes_once_per_interval(budget, steal, interval, steps):
    rails = Guardrails()
    t = Tuner(budget, steal, interval_s=interval)
    now, last = 0.0, {}
    for ev, dt in steps:
        now += dt
        t.observe(ev)
        for c in t.step(now):
            assert c.gain > rails.min_gain
            assert c.setting not in last or now - last[c.setting] >= interval
            last[c.setting] = now
        assert rails.budget_min_ms <= t.budget_ms <= rails.budget_max_ms
        assert rails.steal_min <= t.steal <= rails.steal_max
