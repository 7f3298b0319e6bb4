"""Observations per second through the gRPC gateway against the local producer API.

One real instance per dimension. In alternating rounds, one producer thread
in this process submits N vectors in batches of B, either with
``engine.connect(...).observe`` (shared memory, one copy) or with
``engine.client.Client.stream(...).send`` (gRPC over loopback to the
gateway child, one batch in flight). A round's rate is N over the time until
its last batch is acknowledged as queued; the queue is drained between
rounds and sized so that nothing is ever refused, so both sides meet the same
idle engine. Reports the median rate of each side and gateway/local.

Usage: python bench/gateway.py [--workers W] [--dims 128,768] [--n 20000] [--batch 500] [--rounds 3]
Writes bench/results/gateway-<hostname>-w<W>.json (or --out).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402

from engine.client import Client  # noqa: E402
from tests.harness import wait_for  # noqa: E402  (ingest put the repository root on sys.path)


def drained(eng, timeout: float = 600.0) -> None:
    wait_for(lambda: sum(eng.inst.queued_by_lane()) == 0, timeout, message="the queues drained")


def local_round(eng, space: str, ids: np.ndarray, vecs: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for lo in range(0, len(ids), batch):
        ack = eng.observe(space, ids[lo:lo + batch], vecs[lo:lo + batch])
        if ack.accepted != len(ids[lo:lo + batch]):
            raise ingest.BenchError(f"local observe refused part of a batch: {ack}")
    return len(ids) / (time.perf_counter() - t0)


def grpc_round(target: str, space: str, ids: np.ndarray, vecs: np.ndarray, batch: int) -> float:
    with Client(target) as c, c.stream(space) as s:
        t0 = time.perf_counter()
        for lo in range(0, len(ids), batch):
            ack = s.send(ids[lo:lo + batch], vecs[lo:lo + batch])
            if ack.accepted != len(ids[lo:lo + batch]):
                raise ingest.BenchError(f"gateway refused part of a batch: {ack}")
        return len(ids) / (time.perf_counter() - t0)


def measure(dim: int, args) -> dict:
    rng = np.random.default_rng(dim)
    vecs = rng.standard_normal((args.n, dim), dtype=np.float32)
    local, remote = [], []
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as workdir:
        run = ingest.EngineRun(args.workers, dim, 4 * args.n, args.batch, workdir,
                               ("--max-batch-size", str(args.batch)))
        try:
            run.start()
            eng = run.eng
            port = wait_for(lambda: int(eng.inst.header.gateway_port), 30, message="the gateway's port")
            target = f"127.0.0.1:{port}"
            for r in range(args.rounds):
                base = np.uint64(r * 2 * args.n)
                ids = np.arange(args.n, dtype=np.uint64) + base
                drained(eng)
                local.append(local_round(eng, f"local-{r}", ids, vecs, args.batch))
                drained(eng)
                remote.append(grpc_round(target, f"grpc-{r}", ids + np.uint64(args.n), vecs, args.batch))
                print(f"dim {dim} round {r}: local {local[-1]:,.0f}/s  gRPC {remote[-1]:,.0f}/s", flush=True)
            drained(eng)
        finally:
            run.teardown()
    lm, gm = statistics.median(local), statistics.median(remote)
    return {"dim": dim, "local_per_s": local, "grpc_per_s": remote, "local_median_per_s": lm,
            "grpc_median_per_s": gm, "ratio_grpc_over_local": gm / lm,
            "grpc_mb_per_s": gm * (dim * 4 + 8) / 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--dims", default="128,768")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rows = [measure(int(d), args) for d in args.dims.split(",")]
    print(f"\n{'dim':>5} {'local obs/s':>12} {'gRPC obs/s':>12} {'gRPC/local':>11} {'gRPC MB/s':>10}")
    for r in rows:
        print(f"{r['dim']:>5} {r['local_median_per_s']:>12,.0f} {r['grpc_median_per_s']:>12,.0f} "
              f"{r['ratio_grpc_over_local']:>11.2f} {r['grpc_mb_per_s']:>10.1f}")
    result = {"benchmark": "gateway", "command": " ".join([sys.executable] + sys.argv),
              "machine": ingest.machine_info(), "parameters": vars(args), "rows": rows}
    ingest.write_result(result, "gateway", args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
