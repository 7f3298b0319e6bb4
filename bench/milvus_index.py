"""Which index does Milvus Lite search? Evidence for bench/peers.py's Milvus row.

Milvus Lite 3.x runs in this process (pymilvus starts its gRPC server in a
thread for a ``.db`` URI). Same collection as ``peers.MilvusPeer`` (HNSW, M
16, efConstruction 200, COSINE, search ef 64), same synthetic vectors. What
the public API says and what the in-process collection holds are recorded
side by side, phase by phase:

1. after the inserts (no flush): ``describe_index``; the memtable and the
   sealed segments with the index type attached to each; recall@10 against
   exact neighbours and single-query latency;
2. right after ``flush``: the same, query by query, each tagged with whether
   the segment had an index attached before and after it;
3. after the background index build (waited on inside the collection): the
   same for ``--queries`` queries;
4. references in the same run: a Milvus Lite collection with a ``FLAT``
   index (flushed, built), ``faiss.IndexHNSWFlat`` with the same parameters
   called directly, and numpy brute force.

It also records the source lines of the installed milvus-lite that decide
this (found by text, so the line numbers are those of the installed version).

Usage: python bench/milvus_index.py [--n 20000] [--queries 200]
Writes bench/results/milvus_index-<hostname>.json (or --out).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402
import peers  # noqa: E402

# (file under site-packages/milvus_lite, text of the line, what it shows)
SOURCE_FACTS = (
    ("constants.py", "MEMTABLE_MEMORY_LIMIT = ",
     "inserts stay in the in-memory table until it holds 128 MiB (or an explicit flush)"),
    ("search/executor_indexed.py", "index = BruteForceIndex.build(vectors, metric_type)",
     "a source without an attached index (the memtable, or a segment whose index is not built yet) "
     "is searched by numpy brute force"),
    ("search/executor_indexed.py", "index=seg.indexes.get(vector_field)",
     "a sealed segment is searched through the index attached to it, if any"),
    ("engine/collection.py", "# (even for small newly-flushed segments) is deferred to the bg",
     "flush persists the segment and returns; the index is built afterwards in a background thread"),
    ("engine/collection.py", "built = self._ensure_loaded_segments_indexed()",
     "the background thread builds the missing segment indexes"),
    ("index/factory.py", 'if index_type == "HNSW":',
     "index_type HNSW is FaissHnswIndex ..."),
    ("index/faiss_hnsw.py", "# Cosine = inner product of L2-normalized vectors.",
     "... faiss.IndexHNSWFlat(dim, M, METRIC_INNER_PRODUCT) on L2-normalised vectors for COSINE"),
    ("index/faiss_hnsw.py", "self._index.hnsw.efSearch = ef",
     "search_params ef reaches faiss as efSearch"),
    ("adapter/grpc/servicer.py", "state=common_pb2.IndexState.Finished",
     "describe_index always reports state Finished ..."),
    ("adapter/grpc/servicer.py", "indexed_rows=num_ent",
     "... and indexed_rows = the number of entities, built or not"),
    ("search/executor_indexed.py", "_update_max_seqs(list(seg.pks), seg.seqs)",
     "every query walks all primary keys in Python (a dedup map here, a per-row mask in "
     "_build_local_mask): O(N) interpreter work per query whatever the index"),
)


def source_facts() -> list[dict]:
    import milvus_lite

    root = os.path.dirname(milvus_lite.__file__)
    out = []
    for rel, text, what in SOURCE_FACTS:
        line = None
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as fh:
                for no, src in enumerate(fh, 1):
                    if text in src:
                        line = no
                        break
        except OSError:
            pass
        out.append({"file": f"milvus_lite/{rel}", "line": line, "text": text, "shows": what})
    return out


class Lite:
    """One Milvus Lite collection, reached through pymilvus and, for the
    evidence, through the in-process ``Collection`` behind the server."""

    def __init__(self, workdir: str, dim: int, index_type: str):
        from pymilvus import DataType, MilvusClient
        from milvus_lite.server_manager import server_manager_instance

        self.path = tempfile.mkdtemp(prefix="milvus-", dir=workdir)
        uri = os.path.join(self.path, "bench.db")
        self.client = MilvusClient(uri=uri)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        params = {"M": peers.M, "efConstruction": peers.EF_CONSTRUCTION} if index_type == "HNSW" else {}
        index.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params=params)
        self.client.create_collection("bench", schema=schema, index_params=index)
        _, db, _ = server_manager_instance._servers[os.path.abspath(uri)]
        self.col = db.get_collection("bench")

    def api(self) -> dict:
        names = self.client.list_indexes("bench")
        return {"list_indexes": names,
                "describe_index": {n: self.client.describe_index("bench", n) for n in names}}

    def state(self) -> dict:
        return {"memtable_rows": self.col._memtable.size(),
                "segments": [{"rows": s.num_rows,
                              "indexes": {f: type(ix).__name__ for f, ix in s.indexes.items()}}
                             for s in self.col._segments_snapshot()]}

    def indexed(self) -> bool:
        segs = self.col._segments_snapshot()
        return bool(segs) and all("vector" in s.indexes for s in segs)

    def insert(self, vecs: np.ndarray, batch: int = 5000) -> float:
        t = time.perf_counter()
        for lo in range(0, len(vecs), batch):
            self.client.insert("bench", [{"id": i, "vector": vecs[i]} for i in range(lo, min(len(vecs), lo + batch))])
        return time.perf_counter() - t

    def search(self, vec: np.ndarray) -> list[int]:
        res = self.client.search("bench", data=[vec], limit=peers.K, search_params={"params": {"ef": peers.EF_SEARCH}})
        return [int(h["id"]) for h in res[0]]

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
        shutil.rmtree(self.path, ignore_errors=True)


def queries_report(search, queries: np.ndarray, truth: np.ndarray, tag=None) -> dict:
    """Recall@10 and latency of single-vector queries; with ``tag`` (a
    callable), each query is also tagged with tag() before and after it."""
    lat, hits, tags = [], 0, []
    for q, t in zip(queries, truth):
        before = tag() if tag else None
        t0 = time.perf_counter()
        got = search(q)
        lat.append(time.perf_counter() - t0)
        if tag:
            tags.append([before, tag()])
        hits += len(set(got[:peers.K]) & set(int(x) for x in t))
    out = {"queries": len(queries), "recall_at_10": round(hits / (peers.K * len(queries)), 4),
           "p50_ms": peers.pct(lat, 50), "p99_ms": peers.pct(lat, 99)}
    if tag:
        out["index_attached_before_after"] = tags
    return out


def faiss_reference(base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    import faiss

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    faiss.omp_set_num_threads(1)
    ix = faiss.IndexHNSWFlat(base.shape[1], peers.M, faiss.METRIC_INNER_PRODUCT)
    ix.hnsw.efConstruction = peers.EF_CONSTRUCTION
    t = time.perf_counter()
    ix.add(np.ascontiguousarray(unit(base), dtype=np.float32))
    build_s = time.perf_counter() - t
    ix.hnsw.efSearch = peers.EF_SEARCH
    uq = unit(queries).astype(np.float32)
    out = queries_report(lambda q: [int(x) for x in ix.search(q[None, :], peers.K)[1][0]], uq, truth)
    out["build_s_one_thread"] = round(build_s, 2)
    ub = unit(base).astype(np.float32)

    def brute(q):
        sims = ub @ q
        top = np.argpartition(-sims, peers.K)[:peers.K]
        return [int(x) for x in top[np.argsort(-sims[top])]]
    return {"faiss_IndexHNSWFlat": out, "numpy_brute_force": queries_report(brute, uq, truth)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--memtable-queries", type=int, default=20, help="queries before the flush (slow: ~0.25 s each)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    vecs, data = peers.synthetic(args.n + args.queries, args.dim)
    queries, base = vecs[:args.queries].copy(), np.ascontiguousarray(vecs[args.queries:])
    truth = peers.exact_neighbours(base, queries, peers.K)
    result = {"bench": "milvus_index", "command": "python bench/milvus_index.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": ingest.machine_info(), "params": vars(args), "data": data,
              "versions": {d: ingest._version(d) for d in ("pymilvus", "milvus-lite", "faiss-cpu", "numpy")},
              "loadavg_before": ingest.loadavg(), "source": source_facts(), "phases": {}}
    ph = result["phases"]
    with tempfile.TemporaryDirectory(prefix="engram-milvus-") as workdir:
        lite = Lite(workdir, args.dim, "HNSW")
        try:
            ph["0_created"] = {"api": lite.api(), "inside": lite.state()}
            insert_s = lite.insert(base)
            ph["1_inserted_no_flush"] = {"insert_s": round(insert_s, 3), "api": lite.api(), "inside": lite.state(),
                                         "search": queries_report(lite.search, queries[:args.memtable_queries],
                                                                  truth[:args.memtable_queries])}
            t = time.perf_counter()
            lite.client.flush("bench")
            flushed_at = time.perf_counter()
            ph["2_flushed"] = {"flush_s": round(flushed_at - t, 3), "api": lite.api(), "inside": lite.state()}
            # Query until the background build attaches the index (or all queries are used).
            m, tags, lat, hits = 0, [], [], 0
            while m < args.queries and not lite.indexed():
                before = lite.indexed()
                t0 = time.perf_counter()
                got = lite.search(queries[m])
                lat.append(time.perf_counter() - t0)
                tags.append([before, lite.indexed()])
                hits += len(set(got) & set(int(x) for x in truth[m]))
                m += 1
            ph["2_flushed"]["search_until_indexed"] = {
                "queries": m, "recall_at_10": round(hits / (peers.K * m), 4) if m else None,
                "p50_ms": peers.pct(lat, 50), "p99_ms": peers.pct(lat, 99),
                "index_attached_before_after": tags}
            lite.col._wait_for_bg(600)
            ph["3_indexed"] = {"index_attached_s_after_flush": round(time.perf_counter() - flushed_at, 3),
                               "api": lite.api(), "inside": lite.state(),
                               "search": queries_report(lite.search, queries, truth, tag=lite.indexed)}
        finally:
            lite.close()
        flat = Lite(workdir, args.dim, "FLAT")
        try:
            flat.insert(base)
            flat.client.flush("bench")
            flat.col._wait_for_bg(600)
            result["reference_milvus_flat"] = {"api": flat.api(), "inside": flat.state(),
                                               "search": queries_report(flat.search, queries, truth)}
        finally:
            flat.close()
    result["reference_direct"] = faiss_reference(base, queries, truth)
    result["loadavg_after"] = ingest.loadavg()
    for name, phase in ph.items():
        s = phase.get("search") or phase.get("search_until_indexed")
        print(f"{name}: inside {phase['inside']}")
        if s:
            print(f"    recall@10 {s['recall_at_10']}  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  ({s['queries']} q)")
    for name, s in [("milvus FLAT", result["reference_milvus_flat"]["search"])] + list(result["reference_direct"].items()):
        print(f"{name}: recall@10 {s['recall_at_10']}  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms")
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"milvus_index-{socket.gethostname()}.json")
    ingest.write_result(result, "milvus_index", 0, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
