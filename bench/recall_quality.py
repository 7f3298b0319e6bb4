"""Recall@10 of the engine against one hnswlib index of the whole space, at ef_search 16, 64 and 256.

Does splitting a space into shards (stealing puts a busy space's records
into the thief's own shard) and merging their answers keep the quality of
one index? Same run, same vectors, same queries:

* **engine**: W workers, one memory space, ``--steal-threshold`` low so the
  idle worker steals and the space ends up in W shards (reported); recall
  through ``Engine.recall(space, queries, k=10, ef=...)``;
* **one index**: hnswlib, the whole space in one graph (M 16,
  ef_construction 200, cosine, as the engine).

Both against exact cosine neighbours (numpy), on synthetic Gaussians and on
the stdlib docstring embeddings of ``bench/peers.py`` (needs the ``[bench]``
extra's scikit-learn).

Usage: python bench/recall_quality.py [--n 30000] [--queries 500] [--datasets synthetic,stdlib]
Writes bench/results/recall_quality-2core-w<W>.json (or --out).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402
import peers  # noqa: E402

EFS = (16, 64, 256)
K = 10
SPACE = "quality"


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(map(int, f[:K])) & set(map(int, t[:K]))) for f, t in zip(found, truth))
    return hits / (len(truth) * K)


def one_index(base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    index = hnswlib.Index(space="cosine", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=ingest.M, ef_construction=ingest.EF_CONSTRUCTION)
    index.add_items(base, np.arange(len(base)), num_threads=1)
    out = {}
    for ef in EFS:
        index.set_ef(max(ef, K))
        labels, _ = index.knn_query(queries, k=K, num_threads=1)
        out[str(ef)] = round(recall_at_k(labels, truth), 4)
    return out


def engine(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, workers: int, steal: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as workdir:
        run = ingest.EngineRun(workers, base.shape[1], len(base), 1000, workdir,
                               (f"--steal-threshold={steal}",))
        try:
            run.start()
            eng = run.eng
            ids = np.arange(len(base), dtype=np.uint64)
            for lo in range(0, len(base), 1000):
                done = lo
                while done < min(lo + 1000, len(base)):
                    ack = eng.observe(SPACE, ids[done:lo + 1000], base[done:lo + 1000])
                    done += ack.accepted
                    if not ack.accepted:
                        time.sleep(0.01)
            deadline = time.monotonic() + 600
            while run.instance.status()["spaces"].get(SPACE, {}).get("vectors", 0) < len(base):
                run.check_alive()
                if time.monotonic() > deadline:
                    raise ingest.BenchError("not all vectors inserted in 600 s")
                time.sleep(0.2)
            shards = run.instance.status()["spaces"][SPACE]["shards"]
            out = {"shards": shards}
            for ef in EFS:
                res = eng.recall(SPACE, queries, k=K, ef=ef)
                if not res.complete:
                    raise ingest.BenchError("an incomplete recall")
                out[str(ef)] = round(recall_at_k(res.ids.astype(np.int64), truth), 4)
            return out
        finally:
            run.teardown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(ingest.usable_cpus()))
    p.add_argument("--n", type=int, default=30000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--datasets", default="synthetic,stdlib")
    p.add_argument("--steal-threshold", type=int, default=100)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = {"benchmark": "recall_quality", "command": " ".join([sys.executable] + sys.argv),
              "parameters": {"workers": args.workers, "n": args.n, "queries": args.queries, "k": K,
                             "M": ingest.M, "ef_construction": ingest.EF_CONSTRUCTION,
                             "steal_threshold": args.steal_threshold, "metric": "cosine"},
              "datasets": {}}
    for ds in args.datasets.split(","):
        vecs, what = peers.synthetic(args.n + args.queries, 128) if ds == "synthetic" \
            else peers.stdlib_embeddings(args.n + args.queries, 256)
        base, queries = vecs[:-args.queries], vecs[-args.queries:]
        truth = peers.exact_neighbours(base, queries, K)
        rows = {"one_index": one_index(base, queries, truth),
                "engine": engine(base, queries, truth, args.workers, args.steal_threshold)}
        result["datasets"][ds] = {"data": what, "n": len(base), "recall_at_10": rows}
        print(f"{ds}: n={len(base)} dim={base.shape[1]}  engine shards={rows['engine']['shards']}")
        for ef in EFS:
            e, o = rows["engine"][str(ef)], rows["one_index"][str(ef)]
            print(f"  ef {ef:>3}: engine {e:.4f}  one index {o:.4f}  engine/one index {e / o:.3f}")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"recall_quality-2core-w{args.workers}.json")
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
