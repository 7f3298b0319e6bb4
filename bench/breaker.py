"""Recall latency with one of two workers stopped: breaker on vs off, same run.

One engine (2 workers, dim 16), one space with a shard on each slot. The
worker of slot 1 is stopped (SIGSTOP) in cycles of ``--stop`` seconds with
``--cont`` seconds running in between, so its heartbeat stays fresh enough
for recalls to keep asking it (a stalled worker, not a dead one). Two
producers in this process recall in alternation: one with the shared
breakers, one with them turned off (``Engine.breakers.enabled = False``).
Reported: p50/p99 recall latency and the share of complete answers of each,
and the ratio of the p99s.

    PYTHONPATH=. python bench/breaker.py --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import connect  # noqa: E402
from shm.segment import remove_instance_objects  # noqa: E402


def start(name: str, data: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "engine", "run", "--name", name, "--data-dir", data, "--workers", "2",
            "--dim", "16", "--capacity-normal", "2000", "--grpc-addr", "off", "--metrics-addr", "127.0.0.1:0",
            "--probe-interval", "1", "--log-level", "warning"]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(name: str, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            eng = connect(name)
            if eng.inst.header.ready:
                return eng
            eng.close()
        except Exception:
            pass
        if proc.poll() is not None:
            raise SystemExit("engine exited")
        time.sleep(0.1)
    raise SystemExit("engine did not start")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--stop", type=float, default=1.5)
    ap.add_argument("--cont", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=0.5, help="recall deadline")
    args = ap.parse_args()
    name = f"bbr{uuid.uuid4().hex[:6]}"
    tmp = tempfile.mkdtemp()
    proc = start(name, os.path.join(tmp, "data"))
    try:
        on = wait_ready(name, proc)
        off = connect(name)
        off.breakers.enabled = False
        rng = np.random.default_rng(1)
        vecs = rng.standard_normal((1800, 16)).astype(np.float32)
        n = 0
        while n < len(vecs):  # the home ring holds 1000: the rest spills to the other slot
            n += on.observe("shared", np.arange(n, len(vecs), dtype=np.uint64), vecs[n:]).accepted
        while not (on.inst.shard_counts.sum() == len(vecs) and (on.inst.shard_counts.sum(axis=1) > 0).all()):
            time.sleep(0.05)
        pid = on.status()["workers"][1]["pid"]
        lat = {"on": [], "off": []}
        complete = {"on": 0, "off": 0}
        end = time.monotonic() + args.seconds
        stopped, flip = False, time.monotonic()
        q = rng.standard_normal(16).astype(np.float32)
        while time.monotonic() < end:
            if time.monotonic() >= flip:
                os.kill(pid, signal.SIGCONT if stopped else signal.SIGSTOP)
                stopped = not stopped
                flip = time.monotonic() + (args.stop if stopped else args.cont)
            for key, eng in (("on", on), ("off", off)):
                t0 = time.perf_counter()
                res = eng.recall("shared", q, k=10, timeout=args.timeout)
                lat[key].append(time.perf_counter() - t0)
                complete[key] += res.complete
        os.kill(pid, signal.SIGCONT)
        out = {k: {"recalls": len(v), "p50_ms": round(float(np.percentile(v, 50)) * 1000, 2),
                   "p99_ms": round(float(np.percentile(v, 99)) * 1000, 2),
                   "complete_share": round(complete[k] / len(v), 3)} for k, v in lat.items()}
        out["p99_ratio_off_over_on"] = round(out["off"]["p99_ms"] / max(out["on"]["p99_ms"], 1e-6), 2)
        out["p50_ratio_off_over_on"] = round(out["off"]["p50_ms"] / max(out["on"]["p50_ms"], 1e-6), 2)
        out["conditions"] = {"seconds": args.seconds, "stop_s": args.stop, "cont_s": args.cont,
                             "deadline_s": args.timeout, "cpus": len(os.sched_getaffinity(0))}
        print(json.dumps(out, indent=2))
        os.makedirs("bench/results", exist_ok=True)
        with open("bench/results/breaker.json", "w") as fh:
            json.dump(out, fh, indent=2)
        on.close()
        off.close()
        return 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        remove_instance_objects(name)


if __name__ == "__main__":
    sys.exit(main())
