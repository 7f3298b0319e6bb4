"""The auto-tuner's policy: a pure step function from evidence to setting changes.

Evidence (``Evidence``): exponentially weighted moving averages of what the
engine already measures, sampled by ``engine.supervisor.autotune``:

* ``latency_s``: mean observation latency (enqueue → inserted);
* ``wait_s``: mean queue wait (enqueue → claimed);
* ``utilization``: mean worker busy share, 0-1;
* ``item_s``: insert cost, seconds of worker time per observation;
* ``batch_items``: mean batch size;
* ``idle_with_work``: share of slot samples that found a worker asleep
  while another slot's rings held work;
* ``steal_share``: stolen batches / batches.

Models (the assumptions are the documented part of the tuner):

* Batch budget, lowering: when workers are lightly used (< 60 %) and
  batches fill the budget (batch time ≥ 80 % of it), an observation waits
  for the batch in progress and then for its own, about 1.5 batch times;
  halving the budget is predicted to save 1.5 x the saved batch time.
* Batch budget, raising: when workers are saturated (≥ 90 %) and
  observations queue for longer than two budgets, a longer batch spreads a
  fixed per-batch cost (``BATCH_OVERHEAD_S``: claim, log append, commit,
  metrics) over more items, raising capacity by a factor f; with queueing
  delay taken as proportional to 1 / (1 - utilization) (M/M/1), the
  predicted latency gain is 1 - (1 - U) / (1 - U / f).
* Steal threshold: a ring is worth splitting when its owner needs more
  than two batch budgets to drain it, so the threshold scales with the
  insert cost: ``2 x budget / item_s``. Lowering it is predicted to win back
  the idle share times the fraction of the gap closed; raising it (fewer
  steals, fewer shards per space and so cheaper recall fan-out) the stolen
  share times the same fraction, only while nobody sat idle beside work.

A change is made only when its predicted improvement exceeds ``min_gain``
(10 %), within the guardrails, at most once per ``interval_s`` per setting,
and never for a pinned setting (given explicitly by the operator).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

BATCH_OVERHEAD_S = 0.001
STEAL_HORIZON_BUDGETS = 2.0


@dataclass(frozen=True)
class Guardrails:
    budget_min_ms: float = 5.0
    budget_max_ms: float = 200.0
    steal_min: int = 16
    steal_max: int = 100_000
    min_gain: float = 0.10

    def budget(self, ms: float) -> float:
        return min(self.budget_max_ms, max(self.budget_min_ms, ms))

    def steal(self, n: float) -> int:
        return int(min(self.steal_max, max(self.steal_min, round(n))))


@dataclass(frozen=True)
class Evidence:
    latency_s: float | None = None
    wait_s: float | None = None
    utilization: float | None = None
    item_s: float | None = None
    batch_items: float | None = None
    idle_with_work: float | None = None
    steal_share: float | None = None

    def blend(self, sample: "Evidence", alpha: float) -> "Evidence":
        """EWMA of each field present in ``sample``."""
        out = {}
        for name in self.__dataclass_fields__:
            old, new = getattr(self, name), getattr(sample, name)
            out[name] = old if new is None else (new if old is None else old + alpha * (new - old))
        return Evidence(**out)


@dataclass(frozen=True)
class Change:
    setting: str
    old: float
    new: float
    gain: float
    evidence: str


@dataclass
class Tuner:
    budget_ms: float
    steal: int
    interval_s: float = 300.0
    pinned: tuple[str, ...] = ()
    rails: Guardrails = field(default_factory=Guardrails)
    alpha: float = 0.3
    evidence: Evidence = field(default_factory=Evidence)
    last_change: dict = field(default_factory=dict)  # setting -> time of its last change

    def observe(self, sample: Evidence) -> None:
        self.evidence = self.evidence.blend(sample, self.alpha)

    def step(self, now: float) -> list[Change]:
        """Changes to apply now (already taken into ``budget_ms``/``steal``)."""
        out = []
        for setting, propose in (("batch_budget_ms", self.propose_budget), ("steal_threshold", self.propose_steal)):
            if setting in self.pinned:
                continue
            last = self.last_change.get(setting)
            if last is not None and now - last < self.interval_s:
                continue
            change = propose()
            if change is None or change.gain <= self.rails.min_gain or change.new == change.old:
                continue
            self.last_change[setting] = now
            if setting == "batch_budget_ms":
                self.budget_ms = change.new
            else:
                self.steal = int(change.new)
            out.append(change)
        return out

    def propose_budget(self) -> Change | None:
        e, b = self.evidence, self.budget_ms / 1000.0
        if None in (e.latency_s, e.utilization, e.item_s, e.batch_items) or e.latency_s <= 0:
            return None
        batch_s = e.item_s * e.batch_items
        why = (f"latency {e.latency_s * 1000:.1f} ms, wait {(e.wait_s or 0) * 1000:.1f} ms, utilization "
               f"{e.utilization:.0%}, batch {batch_s * 1000:.1f} ms of {b * 1000:.0f} ms")
        if e.utilization < 0.6 and batch_s >= 0.8 * b:
            new = self.rails.budget(self.budget_ms / 2)
            saved = 1.5 * batch_s * (1 - new / self.budget_ms)
            return Change("batch_budget_ms", self.budget_ms, new, min(1.0, saved / e.latency_s),
                          why + ": light load, batches fill the budget")
        if e.utilization >= 0.9 and (e.wait_s or 0) > 2 * b:
            new = self.rails.budget(self.budget_ms * 2)
            c, b2 = BATCH_OVERHEAD_S, new / 1000.0
            u = min(e.utilization, 0.99)
            f = (b2 / (b2 + c)) / (b / (b + c))
            gain = 1 - (1 - u) / (1 - u / f)
            return Change("batch_budget_ms", self.budget_ms, new, gain, why + ": saturated, backlog")
        return None

    def propose_steal(self) -> Change | None:
        e = self.evidence
        if e.item_s is None or e.item_s <= 0:
            return None
        target = self.rails.steal(STEAL_HORIZON_BUDGETS * self.budget_ms / 1000.0 / e.item_s)
        old = self.steal
        why = (f"insert cost {e.item_s * 1e6:.0f} us/item -> {target} items per "
               f"{STEAL_HORIZON_BUDGETS:g} budgets; idle beside work {(e.idle_with_work or 0):.0%}, "
               f"stolen {(e.steal_share or 0):.0%}")
        if target < old and (e.idle_with_work or 0) > 0:
            gain = e.idle_with_work * (1 - target / max(old, 1))
        elif target > old and (e.idle_with_work or 0) == 0 and (e.steal_share or 0) > 0:
            gain = e.steal_share * (1 - old / target)
        else:
            return None
        return Change("steal_threshold", old, target, gain, why)


def with_evidence(t: Tuner, **kw) -> Tuner:
    """A copy of ``t`` holding ``Evidence(**kw)`` (tests)."""
    return replace(t, evidence=Evidence(**kw), last_change=dict(t.last_change))
