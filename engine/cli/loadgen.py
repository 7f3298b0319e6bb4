"""``engram-stream load``: synthetic observations at a target rate.

Spaces are ``default``, ``space-1``, ``space-2``, ...; priorities drawn from
``--priority-mix``; ids start at a base derived from the clock so repeated
runs do not overwrite each other. A progress line on stderr shows elapsed
time, the submit rate, the inserted rate (from the shard counts in shared
memory), queue depth, backpressure and the observe() call latency; at the
end, enqueue-to-inserted latency percentiles from the metric histogram.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from engine.producer.api import connect
from metrics import readout


def space_names(n: int) -> list[str]:
    return ["default"] + [f"space-{i}" for i in range(1, n)]


def _inserted(eng) -> int:
    return int(eng.inst.shard_counts.sum())


def run_load(cfg, out=sys.stderr) -> int:
    rng = np.random.default_rng()
    names = space_names(cfg.spaces)
    prios = list(cfg.priority_mix)
    weights = np.array([cfg.priority_mix[p] for p in prios], dtype=float)
    weights /= weights.sum()
    batch = cfg.load_batch
    next_id = int(time.time() * 1000) * 1_000_000
    with connect(cfg.name) as eng:
        start = time.monotonic()
        inserted0 = _inserted(eng)
        before = eng.inst.metrics.snapshot()
        sent = accepted = 0
        rejected: dict[str, int] = {}
        lat: list[float] = []
        last_print = 0.0
        tty = out.isatty()
        while True:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= cfg.duration:
                break
            due = int(cfg.rate * elapsed) - sent
            if due < batch:
                time.sleep(min(0.002, max(0.0, (batch - due) / cfg.rate)))
                continue
            space = names[int(rng.integers(len(names)))]
            prio = prios[int(rng.choice(len(prios), p=weights))]
            vectors = rng.standard_normal((batch, eng.dim), dtype=np.float32)
            ids = np.arange(next_id, next_id + batch, dtype=np.uint64)
            next_id += batch
            t0 = time.perf_counter()
            ack = eng.observe(space, ids, vectors, priority=prio)
            lat.append(time.perf_counter() - t0)
            sent += batch
            accepted += ack.accepted
            for reason, n in ack.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + n
            if now - last_print >= 0.5:
                last_print = now
                _progress(out, tty, eng, elapsed, cfg.duration, sent, accepted, rejected,
                          _inserted(eng) - inserted0, lat, ack.backpressure)
        elapsed = time.monotonic() - start
        _progress(out, tty, eng, elapsed, cfg.duration, sent, accepted, rejected,
                  _inserted(eng) - inserted0, lat, eng.status()["backpressure"])
        out.write("\n")
        p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if lat else (0.0, 0.0)
        print(f"sent {sent} in {elapsed:.1f}s ({sent / elapsed:.0f}/s): accepted {accepted}, "
              f"rejected {sum(rejected.values())} {rejected or ''}; "
              f"inserted so far {_inserted(eng) - inserted0}; observe() p50 {p50:.2f} ms p99 {p99:.2f} ms")
        bounds, counts, _ = readout.histogram(eng.inst.metrics, eng.inst.metrics.snapshot(),
                                              "observation_latency_seconds")
        counts = counts - readout.histogram(eng.inst.metrics, before, "observation_latency_seconds")[1]
        qs = [readout.quantile(bounds, counts, q) for q in (0.5, 0.99)]
        if qs[0] is not None:
            top = float(bounds[-1])
            shown = [(">=" if v >= top else "") + f"{v * 1000:.1f} ms" for v in qs]
            print(f"enqueue -> inserted latency (from the metric histogram): p50 {shown[0]}, p99 {shown[1]}")
    return 0


def _progress(out, tty, eng, elapsed, duration, sent, accepted, rejected, inserted, lat, state):
    width = 24
    done = min(1.0, elapsed / duration)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    depth = sum(eng.inst.queued_by_lane())
    recent = lat[-200:]
    p99 = float(np.percentile(recent, 99) * 1000) if recent else 0.0
    line = (f"[{bar}] {elapsed:5.1f}s  sent {sent / max(elapsed, 1e-9):7.0f}/s  "
            f"inserted {inserted / max(elapsed, 1e-9):7.0f}/s  queued {depth:7d}  "
            f"rejected {sum(rejected.values()):6d}  {state:<10}  observe p99 {p99:6.2f} ms")
    out.write(("\r" + line) if tty else (line + "\n"))
    out.flush()
