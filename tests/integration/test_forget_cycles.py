"""500,000 add/forget cycles on a space kept at about 1,000 live vectors: memory stays bounded."""

from __future__ import annotations

import numpy as np
import psutil

from tests.harness import forget_all, observe_all, wait_for
from tests.integration.test_forget_engine import metric, settled

DIM = 16
LIVE = 1000
CYCLES = 500  # x 1,000 ids: 500,000 observes and 500,000 forgets


def shard_memory(ep) -> tuple[int, int]:
    """(RSS of the worker processes together, vectors their shards store)."""
    st = ep.status()
    rss = sum(psutil.Process(w["pid"]).memory_info().rss for w in st["workers"])
    return rss, st["spaces"]["cycles"]["stored"]


def test_add_forget_cycles_keep_shard_memory_bounded(engine_factory):
    ep = engine_factory(max_batch_size=str(LIVE))
    eng = ep.engine()
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((LIVE, DIM)).astype(np.float32)
    samples = []
    for cycle in range(CYCLES):
        ids = np.arange(cycle * LIVE, (cycle + 1) * LIVE, dtype=np.uint64)
        observe_all(eng, "cycles", ids, vecs)
        if cycle:
            assert forget_all(eng, "cycles", ids - LIVE) == 0
        if cycle % 50 == 49:
            wait_for(lambda: settled(ep), 60, message="queues drained")
            samples.append(shard_memory(ep))
    wait_for(lambda: settled(ep), 60, message="queues drained")
    st = ep.status()["spaces"]["cycles"]
    assert st["vectors"] == LIVE
    rss, stored = zip(*samples)
    print(f"every 50 cycles: stored {list(stored)}, worker RSS MiB {[r >> 20 for r in rss]}, "
          f"compactions {metric(eng, 'compactions_total'):.0f}")
    # Element count: the live 1,000 plus what waits for the next compaction (a
    # shard is rebuilt once its dead share passes --compact-ratio 0.2; on a
    # loaded machine a rebuild takes longer, and dead vectors pile up meanwhile).
    assert max(stored) <= 8 * LIVE, stored
    # RSS: after the first samples (allocator warm-up), no growth with the cycles.
    assert max(rss[2:]) - rss[2] < 32 << 20, [r >> 20 for r in rss]
    assert metric(eng, "compactions_total") >= 10
    assert metric(eng, "forgets_total") == (CYCLES - 1) * LIVE
    # the identity table does not keep every forgotten id either
    wait_for(lambda: eng.inst.ids.used <= 4 * LIVE, 60, message="old tombstones dropped")
    res = eng.recall("cycles", vecs[:50], k=10, timeout=30)
    assert (res.ids >= (CYCLES - 1) * LIVE).all()  # only the last cycle's ids are live
