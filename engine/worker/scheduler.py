"""Which lane a worker serves next, and how large a batch it takes.

Lane order is strict priority, high → normal → low, with starvation
protection: a lane with work that has been passed over ``patience[lane]``
batches in a row is served next regardless. With the default patience
(normal 4, low 16), under a flood of high-priority work at least one batch
in 5 goes to normal and one in 17 to low.

Batch size adapts (DESIGN §4): the worker keeps a moving average of seconds
per inserted item and sizes batches to fit ``budget`` seconds, clamped to
``[batch_min, batch_max]`` and to what is queued. (Recall is not held up
by a batch: the worker answers queries between ~5 ms slices of it, see
engine/worker/loop.py.) Clocks are injected so the policy is tested without
processes (STYLE §7).
"""

from __future__ import annotations

PATIENCE = (0, 4, 16)


class LaneScheduler:
    def __init__(self, patience: tuple[int, ...] = PATIENCE):
        self.patience = patience
        self.skipped = [0] * len(patience)

    def order(self, depths: list[int]) -> list[int]:
        """Lanes with work, in the order to try them."""
        lanes = [lane for lane, d in enumerate(depths) if d > 0]
        starving = [lane for lane in lanes if lane > 0 and self.skipped[lane] >= self.patience[lane]]
        if starving:
            first = max(starving)  # the lowest lane is the one most at risk
            return [first] + [lane for lane in lanes if lane != first]
        return lanes

    def served(self, lane: int, depths: list[int]) -> None:
        """Record that ``lane`` got a batch while the others had ``depths``."""
        for other, d in enumerate(depths):
            if other != lane:
                # A lane with no work has nothing to starve: its count restarts.
                self.skipped[other] = self.skipped[other] + 1 if d > 0 else 0
        self.skipped[lane] = 0


class BatchSizer:
    def __init__(self, batch_min: int, batch_max: int, budget_s: float, alpha: float = 0.2):
        self.batch_min = batch_min
        self.batch_max = batch_max
        self.budget_s = budget_s
        self.alpha = alpha
        self.seconds_per_item: float | None = None

    def size(self, available: int) -> int:
        if self.seconds_per_item is None or self.seconds_per_item <= 0:
            target = self.batch_min
        else:
            target = int(self.budget_s / self.seconds_per_item)
        target = max(self.batch_min, min(self.batch_max, target))
        return max(1, min(available, target))

    def record(self, items: int, seconds: float) -> None:
        if items <= 0 or seconds <= 0:
            return
        sample = seconds / items
        if self.seconds_per_item is None:
            self.seconds_per_item = sample
        else:
            self.seconds_per_item += self.alpha * (sample - self.seconds_per_item)
