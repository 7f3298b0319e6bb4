"""The engine against what users would pick instead: Chroma, Milvus Lite, hnswlib.

Same vectors, same machine, same run. Contenders (all cosine, HNSW M=16,
ef_construction=200, ef at query time 64: the engine's defaults, set on every
peer that lets us set them):

* **engine** — a real instance (``python -m engine run``, W workers, default
  settings except ``--dim``/``--metric``; ephemeral metrics/gRPC ports). One
  space; the producer in this process calls ``observe`` in batches of
  ``--batch`` and resubmits rejected suffixes.
* **chroma** — ``chromadb.PersistentClient`` in a temp dir, one collection
  with ``configuration={"hnsw": {space, max_neighbors, ef_construction,
  ef_search}}``, ``add`` in batches of ``client.get_max_batch_size()``.
* **milvus** — Milvus Lite (``pymilvus.MilvusClient`` on a local ``.db``
  file URI; the server runs in this process as threads), HNSW index (faiss
  ``IndexHNSWFlat``, M=16, efConstruction=200, search ef=64) on a
  FLOAT_VECTOR field, COSINE; ``insert`` in batches of ``--milvus-batch``.
  Until ``flush`` the rows sit in its in-memory table, which every query
  scans exactly; after ``flush`` the segment's HNSW index is built in a
  background thread and queries scan the segment exactly until it is
  attached (bench/milvus_index.py shows it). So the idle queries wait for
  that build (``index_build_s``), and ``throughput_indexed`` counts insert +
  flush + build.
* **hnswlib** — one ``hnswlib.Index`` in this process, ``add_items`` in
  batches of ``--batch`` with ``num_threads=W``: the ceiling.

Per contender and data set:

* ingest throughput until every vector is searchable: N / (time from the first
  insert call until a recall of the last vector returns it in its top 10; for
  the engine the shard counts are polled until they add up to N first, then
  the whole last batch is recalled);
* recall@10 of ``--queries`` held-out vectors against exact cosine
  neighbours (numpy brute force), with single-vector queries whose latencies
  give p50/p99 "idle";
* p50/p99 "under ingest": a second, fresh ingest of the same vectors while a
  thread in this process issues one single-vector recall every
  ``--probe-ms`` (paced, the same for every contender);
* resident memory per vector: RSS delta over the first ingest of the engine's
  worker processes (psutil), or of this process and its children for the
  embedded peers, divided by N.

With ``--repeats`` N every contender is measured N times on the same data
(the contender order rotates each repeat); the JSON keeps every run and
reports, per figure and per engine/peer ratio (each ratio taken within one
repeat), the median and the min–max. Every single-query latency is kept
(``lat_ms``), and a second PNG (``-cdf.png``) draws their CDFs, idle and
under ingest, pooled over the repeats.

Data sets: ``synthetic`` (float32 standard normal, fixed seed) and ``stdlib``
(the docstring paragraphs of the running Python's standard library and of
the installed numpy: TF-IDF, scikit-learn, then TruncatedSVD to
``--real-dim`` dimensions; see ``stdlib_docstrings``; about 14,500
paragraphs here, so that set is capped by what there is).

Usage: python bench/peers.py [--n 20000] [--repeats 3] [--peers engine,chroma,milvus,hnswlib]
Writes bench/results/peers-<hostname>-w<W>.json (or --out), and a .png and a
-cdf.png next to it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import argparse  # noqa: E402
import ast  # noqa: E402
import gc  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cdfplot  # noqa: E402
import ingest  # noqa: E402  (bench/ingest.py: machine info, host load, version lookup)
from tests.harness import EngineProcess  # noqa: E402  (ingest put the root on sys.path)

M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 64
K = 10
SEED = 20240611
PEERS = ("engine", "chroma", "milvus", "hnswlib")


class BenchError(Exception):
    pass


# -- data -------------------------------------------------------------------------
def synthetic(n: int, dim: int) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(SEED + dim)
    return rng.standard_normal((n, dim), dtype=np.float32), {
        "kind": "synthetic", "what": f"float32 standard normal, seed {SEED + dim}"}


def _docstring_paragraphs(root: str, skip: set[str]) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    out: list[str] = []
    for path in sorted(files):
        try:
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out += [para.strip() for para in doc.split("\n\n") if len(para.strip()) >= 60]
    return out


def stdlib_docstrings() -> list[str]:
    """The paragraphs (blank-line separated, >= 60 characters) of every
    module/class/function docstring in the ``.py`` files of the running
    Python's standard library (``sysconfig.get_paths()["stdlib"]`` without
    ``test``, ``tests``, ``idlelib``, ``lib2to3``, ``site-packages``) and of
    the installed numpy package (without ``tests``); files in sorted order,
    exact duplicates dropped (first kept)."""
    paras = _docstring_paragraphs(sysconfig.get_paths()["stdlib"],
                                  {"test", "tests", "idlelib", "site-packages", "lib2to3"})
    paras += _docstring_paragraphs(os.path.dirname(np.__file__), {"tests"})
    return list(dict.fromkeys(paras))


def stdlib_embeddings(n: int, dim: int) -> tuple[np.ndarray, dict]:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = stdlib_docstrings()
    t0 = time.perf_counter()
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, max_df=0.5, stop_words="english")
    x = tfidf.fit_transform(docs)
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=5, random_state=0)
    emb = svd.fit_transform(x).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1)
    keep = norms > 1e-6
    emb = emb[keep]
    rows = np.random.default_rng(SEED).permutation(len(emb))[:n]
    return np.ascontiguousarray(emb[rows]), {
        "kind": "stdlib", "python": sys.version.split()[0],
        "numpy": np.__version__,
        "what": (f"docstring paragraphs (>= 60 chars, deduplicated) of the Python {sys.version.split()[0]} "
                 f"standard library and numpy {np.__version__} .py files; TfidfVectorizer(sublinear_tf, min_df=2, max_df=0.5, "
                 f"english stop words) -> TruncatedSVD({dim}, randomized, n_iter=5, random_state=0); "
                 "zero rows dropped, shuffled (seed) and cut"),
        "docstrings": len(docs), "vocabulary": len(tfidf.vocabulary_),
        "svd_explained_variance": round(float(svd.explained_variance_ratio_.sum()), 4),
        "nonzero_rows": int(keep.sum()), "build_s": round(time.perf_counter() - t0, 2)}


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ b.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


# -- memory -------------------------------------------------------------------------
def trim() -> None:
    """Collect garbage and hand freed heap pages back to the kernel
    (glibc ``malloc_trim``), so an RSS delta is not hidden by memory an earlier
    phase freed but kept resident."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def own_tree() -> list[int]:
    me = psutil.Process()
    return [me.pid] + [c.pid for c in me.children(recursive=True)]


# -- contenders ---------------------------------------------------------------------
# Each: setup() -> None; insert(lo, hi) (one batch); search(vec, k) -> list of ids;
# settle() -> None (wait until all inserted vectors are searchable, then the
# caller checks the last one); mem_pids() -> pids whose RSS counts; close().
class HnswlibPeer:
    name = "hnswlib"
    prealloc = True

    def __init__(self, vecs, workers, batch, workdir):
        self.vecs, self.workers, self.batch = vecs, workers, batch
        self.detail = {"batch": batch, "num_threads": workers}

    def setup(self):
        self.ix = hnswlib.Index(space="cosine", dim=self.vecs.shape[1])
        self.ix.init_index(max_elements=len(self.vecs), M=M, ef_construction=EF_CONSTRUCTION)
        self.ix.set_ef(EF_SEARCH)

    def batches(self):
        return [(lo, min(len(self.vecs), lo + self.batch)) for lo in range(0, len(self.vecs), self.batch)]

    def insert(self, lo, hi):
        self.ix.add_items(self.vecs[lo:hi], np.arange(lo, hi), num_threads=self.workers)

    def settle(self):
        pass

    def search(self, vec, k):
        labels, _ = self.ix.knn_query(vec, k=k, num_threads=1)
        return [int(x) for x in labels[0]]

    def mem_pids(self):
        return own_tree()

    def close(self):
        self.ix = None


class ChromaPeer:
    name = "chroma"

    def __init__(self, vecs, workers, batch, workdir):
        self.vecs, self.workdir = vecs, workdir

    def setup(self):
        import chromadb
        from chromadb.config import Settings

        self.path = tempfile.mkdtemp(prefix="chroma-", dir=self.workdir)
        self.client = chromadb.PersistentClient(path=self.path, settings=Settings(anonymized_telemetry=False))
        self.col = self.client.create_collection(
            "bench", embedding_function=None,
            configuration={"hnsw": {"space": "cosine", "max_neighbors": M,
                                    "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH}})
        self.batch = int(self.client.get_max_batch_size())
        self.detail = {"batch": self.batch, "chromadb": ingest._version("chromadb"),
                       "configuration": {"space": "cosine", "max_neighbors": M,
                                         "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH}}
        self.ids = [str(i) for i in range(len(self.vecs))]

    def batches(self):
        return [(lo, min(len(self.vecs), lo + self.batch)) for lo in range(0, len(self.vecs), self.batch)]

    def insert(self, lo, hi):
        self.col.add(ids=self.ids[lo:hi], embeddings=self.vecs[lo:hi])

    def settle(self):
        pass

    def search(self, vec, k):
        res = self.col.query(query_embeddings=vec[None, :], n_results=k, include=[])
        return [int(x) for x in res["ids"][0]]

    def mem_pids(self):
        return own_tree()

    def close(self):
        self.col = None
        try:
            self.client.reset()
        except Exception:
            pass
        self.client = None
        shutil.rmtree(self.path, ignore_errors=True)


class MilvusPeer:
    name = "milvus"

    def __init__(self, vecs, workers, batch, workdir, milvus_batch=5000):
        self.vecs, self.workdir, self.batch = vecs, workdir, milvus_batch

    def setup(self):
        from pymilvus import DataType, MilvusClient

        self.path = tempfile.mkdtemp(prefix="milvus-", dir=self.workdir)
        self.uri = os.path.join(self.path, "bench.db")
        self.client = MilvusClient(uri=self.uri)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.vecs.shape[1])
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",
                        params={"M": M, "efConstruction": EF_CONSTRUCTION})
        self.client.create_collection("bench", schema=schema, index_params=index)
        self.detail = {"batch": self.batch, "index": "HNSW (faiss IndexHNSWFlat)", "pymilvus": ingest._version("pymilvus"),
                       "milvus_lite": ingest._version("milvus-lite"), "faiss_cpu": ingest._version("faiss-cpu"),
                       "describe_index": self.client.describe_index("bench", "vector")}

    def batches(self):
        return [(lo, min(len(self.vecs), lo + self.batch)) for lo in range(0, len(self.vecs), self.batch)]

    def insert(self, lo, hi):
        rows = [{"id": i, "vector": self.vecs[i]} for i in range(lo, hi)]
        self.client.insert("bench", rows)

    def settle(self):
        pass

    def search(self, vec, k):
        res = self.client.search("bench", data=[vec], limit=k, search_params={"params": {"ef": EF_SEARCH}})
        return [int(h["id"]) for h in res[0]]

    def flush(self):
        self.client.flush("bench")

    def wait_indexed(self) -> list[dict]:
        """Wait until every sealed segment has its vector index attached.

        Milvus Lite 3.x builds it in a background thread after ``flush``
        (milvus_lite/engine/collection.py, ``_trigger_flush`` →
        ``_bg_compact_and_index``) and searches a segment without one by
        brute force (milvus_lite/search/executor_indexed.py). No public call
        waits for it: ``describe_index`` reports ``Finished`` and
        ``indexed_rows`` = all rows before any index exists
        (adapter/grpc/servicer.py). So this reaches into the in-process
        collection behind the server and drains its background queue."""
        from milvus_lite.server_manager import server_manager_instance

        _, db, _ = server_manager_instance._servers[os.path.abspath(self.uri)]
        col = db.get_collection("bench")
        col._wait_for_bg(600)
        segments = [{"rows": s.num_rows, "indexes": {f: type(ix).__name__ for f, ix in s.indexes.items()}}
                    for s in col._segments_snapshot()]
        if col._memtable.size() or not all("vector" in s["indexes"] for s in segments):
            raise BenchError(f"milvus: not every row is in an indexed segment: memtable "
                             f"{col._memtable.size()}, segments {segments}")
        return segments

    def mem_pids(self):
        return own_tree()

    def close(self):
        try:
            self.client.close()
        except Exception:
            pass
        self.client = None
        shutil.rmtree(self.path, ignore_errors=True)


class EnginePeer:
    name = "engine"
    SPACE = "peers"

    def __init__(self, vecs, workers, batch, workdir):
        self.vecs, self.workers, self.batch, self.workdir = vecs, workers, batch, workdir
        self.incomplete = 0  # recalls answered without every shard (counted, and reported)

    def setup(self):
        self.inst = EngineProcess(self.workdir, defaults=None, prefix="peers", log_tail=5000,
                                  workers=self.workers, dim=self.vecs.shape[1], metric="cosine",
                                  metrics_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0", log_level="warning")
        self.inst.start(wait=False)
        self.inst.wait_ready(60, workers=True)
        self.eng = self.inst.engine()
        st = self.eng.status()
        self.worker_pids = [w["pid"] for w in st["workers"]]
        self.supervisor_pid = st["pid"]
        self.ids = np.arange(len(self.vecs), dtype=np.uint64)
        self.detail = {"batch": self.batch, "workers": self.workers, "spaces": 1,
                       "flags": "defaults + --dim --metric cosine (ephemeral metrics/gRPC ports)",
                       "rejected_resubmitted": 0}

    def batches(self):
        return [(lo, min(len(self.vecs), lo + self.batch)) for lo in range(0, len(self.vecs), self.batch)]

    def insert(self, lo, hi):
        done = lo
        while done < hi:
            done += self.eng.observe(self.SPACE, self.ids[done:hi], self.vecs[done:hi]).accepted
            if done < hi:
                self.detail["rejected_resubmitted"] += hi - done
                time.sleep(0.001)

    def settle(self):
        n = len(self.vecs)
        deadline = time.monotonic() + 300
        counts = self.eng.inst.shard_counts
        while int(counts.sum()) < n:
            if time.monotonic() > deadline:
                raise BenchError(f"engine holds {int(counts.sum())}/{n} after 300 s")
            self.inst.check_alive()
            time.sleep(0.005)
        lo = (n - 1) // self.batch * self.batch
        res = self.eng.recall(self.SPACE, self.vecs[lo:n], k=K)
        self.detail["last_batch_self_hits"] = float(np.mean(
            [int(i) in set(int(x) for x in row) for i, row in zip(range(lo, n), res.ids)]))
        self.detail["last_batch_recall_complete"] = bool(res.complete)
        self.detail["shards"] = int((counts > 0).sum())

    def search(self, vec, k):
        res = self.eng.recall(self.SPACE, vec, k=k)
        if not res.complete:  # a worker missed the deadline, or its recall breaker is open
            self.incomplete += 1
        return [int(x) for x in res.ids[0]]

    def mem_pids(self):
        return self.worker_pids

    def close(self):
        try:
            self.detail["supervisor_rss_bytes"] = rss([self.supervisor_pid])
        except Exception:
            pass
        self.eng = None
        self.inst.disconnect()
        self.inst.terminate(30)
        self.inst.cleanup()
        shutil.rmtree(self.inst.data_dir, ignore_errors=True)


def make_peer(name, vecs, args, workdir):
    if name == "engine":
        return EnginePeer(vecs, args.workers, args.batch, workdir)
    if name == "chroma":
        return ChromaPeer(vecs, args.workers, args.batch, workdir)
    if name == "milvus":
        return MilvusPeer(vecs, args.workers, args.batch, workdir, args.milvus_batch)
    return HnswlibPeer(vecs, args.workers, args.batch, workdir)


# -- measurement ----------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 3) if xs else None


def samples_ms(xs: list[float]) -> list[float]:
    """Every latency, in ms to the microsecond, in the order measured."""
    return [round(x * 1e3, 3) for x in xs]


def ingest_until_searchable(peer, n: int, probe_queries: np.ndarray | None, probe_ms: float) -> dict:
    """Insert everything; stop the clock once the last vector finds itself.
    With ``probe_queries``, a thread issues one single-vector recall every
    ``probe_ms`` from the end of the first insert until the clock stops."""
    lat: list[float] = []
    stop = threading.Event()
    errors: list[str] = []

    def probe():
        j, nxt = 0, time.perf_counter()
        while not stop.is_set():
            t = time.perf_counter()
            try:
                peer.search(probe_queries[j % len(probe_queries)], K)
            except Exception as exc:  # a peer refusing a query mid-ingest is a result, not a crash
                errors.append(repr(exc)[:200])
            lat.append(time.perf_counter() - t)
            j += 1
            nxt += probe_ms / 1e3
            time.sleep(max(0.0, nxt - time.perf_counter()))

    prober = threading.Thread(target=probe, daemon=True) if probe_queries is not None else None
    batches = peer.batches()
    incomplete0 = getattr(peer, "incomplete", 0)
    h0, t0 = ingest.host_busy_s(), time.perf_counter()
    for j, (lo, hi) in enumerate(batches):
        peer.insert(lo, hi)
        if j == 0 and prober is not None:
            prober.start()
    t_inserted = time.perf_counter() - t0
    peer.settle()
    polls = 0
    while True:
        polls += 1
        if n - 1 in peer.search(peer.vecs[n - 1], K):
            break
        if time.perf_counter() - t0 > 600:
            raise BenchError(f"{peer.name}: last vector not searchable after 600 s")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    h1 = ingest.host_busy_s()
    stop.set()
    if prober is not None:
        prober.join(10)
    return {"seconds": round(elapsed, 4), "throughput": round(n / elapsed, 1),
            "insert_calls_s": round(t_inserted, 4), "searchable_polls": polls,
            "host_busy_s": round(h1 - h0, 3),
            "probe": None if prober is None else {
                "queries": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                "errors": len(errors), "first_error": errors[0] if errors else None,
                "incomplete": getattr(peer, "incomplete", 0) - incomplete0,
                "lat_ms": samples_ms(lat)}}


def idle_recall(peer, queries: np.ndarray, truth: np.ndarray) -> dict:
    lat, hits = [], 0
    incomplete0 = getattr(peer, "incomplete", 0)
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        got = peer.search(q, K)
        lat.append(time.perf_counter() - t0)
        hits += len(set(got[:K]) & set(int(x) for x in t))
    return {"recall_at_10": round(hits / (K * len(queries)), 4), "queries": len(queries),
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "incomplete": getattr(peer, "incomplete", 0) - incomplete0, "lat_ms": samples_ms(lat)}


def run_contender(name: str, vecs: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                  args, workdir: str) -> dict:
    n = len(vecs)
    out: dict = {"peer": name}
    # Pass 1: clean ingest (throughput, memory), then idle recall/latency.
    peer = make_peer(name, vecs, args, workdir)
    try:
        if getattr(peer, "prealloc", False):  # hnswlib touches its whole index at init_index
            trim()
            m0 = rss(peer.mem_pids())
        peer.setup()
        trim()
        if not getattr(peer, "prealloc", False):
            m0 = rss(peer.mem_pids())
        out["ingest"] = ingest_until_searchable(peer, n, None, args.probe_ms)
        trim()
        m1 = rss(peer.mem_pids())
        out["rss_before_bytes"], out["rss_after_bytes"] = m0, m1
        out["bytes_per_vector"] = round((m1 - m0) / n, 1)
        if hasattr(peer, "flush"):  # Milvus: seal and build the index before measuring queries
            t = time.perf_counter()
            peer.flush()
            t1 = time.perf_counter()
            out["flush_s"] = round(t1 - t, 3)
            out["segments"] = peer.wait_indexed()
            out["index_build_s"] = round(time.perf_counter() - t1, 3)
            out["throughput_indexed"] = round(
                n / (out["ingest"]["seconds"] + out["flush_s"] + out["index_build_s"]), 1)
        out["idle"] = idle_recall(peer, queries, truth)
        out["detail"] = dict(peer.detail)
    finally:
        peer.close()
    # Pass 2: a fresh ingest of the same vectors with the recall probe running.
    peer = make_peer(name, vecs, args, workdir)
    try:
        peer.setup()
        out["under_ingest"] = ingest_until_searchable(peer, n, queries, args.probe_ms)
    finally:
        peer.close()
    gc.collect()
    return out


# -- report ---------------------------------------------------------------------------
# Figure name -> where it sits in one run's row of a contender.
FIGURES = {
    "throughput": ("ingest", "throughput"),
    "throughput_indexed": ("throughput_indexed",),  # Milvus: insert + flush + index build
    "recall_at_10": ("idle", "recall_at_10"),
    "p50_idle_ms": ("idle", "p50_ms"),
    "p99_idle_ms": ("idle", "p99_ms"),
    "p50_under_ingest_ms": ("under_ingest", "probe", "p50_ms"),
    "p99_under_ingest_ms": ("under_ingest", "probe", "p99_ms"),
    "queries_under_ingest": ("under_ingest", "probe", "queries"),
    "incomplete_idle": ("idle", "incomplete"),  # engine: recalls missing a shard
    "incomplete_under_ingest": ("under_ingest", "probe", "incomplete"),
    "bytes_per_vector": ("bytes_per_vector",),
    "flush_s": ("flush_s",),
    "index_build_s": ("index_build_s",),
}
# Ratio name -> (engine figure, peer figure).
RATIOS = {
    "throughput": ("throughput", "throughput"),
    "throughput_vs_indexed": ("throughput", "throughput_indexed"),
    "recall_at_10": ("recall_at_10", "recall_at_10"),
    "p99_idle": ("p99_idle_ms", "p99_idle_ms"),
    "p99_under_ingest": ("p99_under_ingest_ms", "p99_under_ingest_ms"),
    "bytes_per_vector": ("bytes_per_vector", "bytes_per_vector"),
}


def figures(row: dict) -> dict:
    """The FIGURES of one contender's row of one run (absent ones left out)."""
    out = {}
    for name, path in FIGURES.items():
        v = row
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            out[name] = v
    return out


def spread(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 4), "min": round(float(min(values)), 4),
            "max": round(float(max(values)), 4), "n": len(values)}


def ratios(rows: dict) -> dict:
    """engine / peer for each RATIOS figure, within one run."""
    e = rows.get("engine")
    if not e or "error" in e:
        return {}
    fe = figures(e)
    out = {}
    for name, r in rows.items():
        if name == "engine" or "error" in r:
            continue
        fp = figures(r)
        out[f"engine/{name}"] = {k: round(fe[a] / fp[b], 3) for k, (a, b) in RATIOS.items()
                                 if a in fe and fp.get(b)}
    return out


def summarise(runs: list[dict], peers: list[str]) -> tuple[dict, dict]:
    """Median and min–max over the repeats: of each figure per contender, and
    of each per-run ratio."""
    summary = {}
    for name in peers:
        ok = [run[name] for run in runs if "error" not in run[name]]
        errors = [run[name]["error"] for run in runs if "error" in run[name]]
        figs = [figures(r) for r in ok]
        summary[name] = {k: spread([f[k] for f in figs if k in f]) for k in FIGURES if any(k in f for f in figs)}
        summary[name]["runs_ok"] = len(ok)
        if errors:
            summary[name]["errors"] = errors
    per_run = [ratios(run) for run in runs]
    pairs = sorted({pair for rs in per_run for pair in rs})
    ratio_summary = {}
    for pair in pairs:
        vals = [rs[pair] for rs in per_run if pair in rs]
        ratio_summary[pair] = {k: spread([v[k] for v in vals if k in v]) for k in RATIOS
                               if any(k in v for v in vals)}
    return summary, ratio_summary


def fmt(sp: dict | None, digits: int = 2) -> str:
    if not sp:
        return "-"
    if sp["n"] == 1 or sp["min"] == sp["max"]:
        return f"{sp['median']:,.{digits}f}"
    return f"{sp['median']:,.{digits}f} [{sp['min']:,.{digits}f}–{sp['max']:,.{digits}f}]"


def print_table(ds: str, summary: dict, ratio_summary: dict) -> None:
    print(f"\n{ds}: median [min–max] over the repeats")
    print("  peer | vec/s until searchable | recall@10 | p50 / p99 idle ms | p50 / p99 under ingest ms (queries) | B/vector")
    for name, f in summary.items():
        if not f["runs_ok"]:
            print(f"  {name}: ERROR {f['errors'][0][:300]}")
            continue
        line = (f"  {name:8s} {fmt(f.get('throughput'), 0)} | {fmt(f.get('recall_at_10'), 4)} | "
                f"{fmt(f.get('p50_idle_ms'))} / {fmt(f.get('p99_idle_ms'))} | "
                f"{fmt(f.get('p50_under_ingest_ms'), 1)} / {fmt(f.get('p99_under_ingest_ms'), 1)} "
                f"({fmt(f.get('queries_under_ingest'), 0)}) | {fmt(f.get('bytes_per_vector'), 0)}")
        inc = [f[k]["max"] for k in ("incomplete_idle", "incomplete_under_ingest") if k in f]
        if any(inc):
            line += (f"  INCOMPLETE recalls idle {fmt(f.get('incomplete_idle'), 0)}, "
                     f"under ingest {fmt(f.get('incomplete_under_ingest'), 0)}")
        if "throughput_indexed" in f:
            line += (f"\n           until indexed {fmt(f['throughput_indexed'], 0)} vec/s "
                     f"(flush {fmt(f['flush_s'])} s, index build {fmt(f['index_build_s'])} s)")
        print(line)
    for pair, rs in ratio_summary.items():
        print(f"  {pair}: " + "  ".join(f"{k} {fmt(v, 3)}" for k, v in rs.items()))


COLORS = {"engine": "C0", "chroma": "C1", "milvus": "C2", "hnswlib": "C7"}


def plot(result: dict, path: str) -> None:
    """Throughput (median, min–max bars) and recall@10 against p99 latency (medians)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["datasets"])
    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 4 * len(sets)), squeeze=False)
    reps = result["params"]["repeats"]
    for row, ds in enumerate(sets):
        rows = {k: v for k, v in result["datasets"][ds]["peers"].items() if v["runs_ok"]}
        shape = result["datasets"][ds]["shape"]
        ax = axes[row][0]
        names = list(rows)
        med = [rows[p]["throughput"]["median"] for p in names]
        err = [[m - rows[p]["throughput"]["min"] for p, m in zip(names, med)],
               [rows[p]["throughput"]["max"] - m for p, m in zip(names, med)]]
        ax.bar(names, med, yerr=err, capsize=4, color=[COLORS[p] for p in names])
        for j, p in enumerate(names):
            if "throughput_indexed" in rows[p]:
                ax.plot([j - 0.4, j + 0.4], [rows[p]["throughput_indexed"]["median"]] * 2, "k--", lw=1)
                ax.annotate("until indexed", (j, rows[p]["throughput_indexed"]["median"]),
                            fontsize=7, ha="center", va="bottom")
        ax.set_ylabel("vectors/s until searchable")
        ax.set_title(f"{ds} {shape[0]}x{shape[1]}: ingest throughput (median, min-max of {reps})", fontsize=9)
        ax = axes[row][1]
        for p in names:
            ax.scatter(rows[p]["p99_idle_ms"]["median"], rows[p]["recall_at_10"]["median"], color=COLORS[p],
                       marker="o", label=f"{p} idle")
            if "p99_under_ingest_ms" in rows[p]:
                ax.scatter(rows[p]["p99_under_ingest_ms"]["median"], rows[p]["recall_at_10"]["median"],
                           color=COLORS[p], marker="x", label=f"{p} under ingest")
        ax.set_xscale("log")
        ax.set_xlabel("recall latency p99, ms (log)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"{ds}: recall@10 vs p99 latency (medians; o idle, x under ingest)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def plot_cdf(result: dict, path: str) -> None:
    """Latency CDFs (log x) per data set: idle and under ingest, one line per
    contender, every query of every repeat."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["datasets"])
    fig, axes = plt.subplots(len(sets), 2, figsize=(12, 4.2 * len(sets)), squeeze=False)
    reps = result["params"]["repeats"]
    for row, ds in enumerate(sets):
        runs = result["datasets"][ds]["runs"]
        for col, (what, title) in enumerate((("idle", "idle (after ingest)"),
                                             ("under_ingest", f"under ingest (one query every {result['params']['probe_ms']:g} ms)"))):
            ax = axes[row][col]
            for name in result["datasets"][ds]["peers"]:
                lat = []
                for run in runs:
                    r = run[name]
                    if "error" in r:
                        continue
                    lat += r["idle"]["lat_ms"] if what == "idle" else r["under_ingest"]["probe"]["lat_ms"]
                if lat:
                    cdfplot.line(ax, lat, name, COLORS[name])
            cdfplot.axes(ax, "single-vector recall latency, ms (log)", f"{ds}: {title}, {reps} repeat(s) pooled")
    cdfplot.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n", type=int, default=20_000, help="vectors per data set")
    p.add_argument("--dim", type=int, default=128, help="synthetic dimension")
    p.add_argument("--real-dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch", type=int, default=1000, help="engine observe / hnswlib add_items batch")
    p.add_argument("--milvus-batch", type=int, default=5000)
    p.add_argument("--probe-ms", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=1, help="measure every contender this many times "
                   "(order rotated each repeat); figures and ratios as median and min-max")
    p.add_argument("--datasets", default="synthetic,stdlib")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, ingest._interrupt)  # SIGTERM tears the engine instances down too
    peers = [x for x in args.peers.split(",") if x]
    result = {"bench": "peers", "command": "python bench/peers.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": ingest.machine_info(), "params": vars(args),
              "versions": {d: ingest._version(d) for d in ("chromadb", "pymilvus", "milvus-lite", "faiss-cpu",
                                                         "hnswlib", "scikit-learn", "numpy")},
              "hnsw": {"M": M, "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH, "metric": "cosine"},
              "loadavg_before": ingest.loadavg(), "datasets": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engram-peers-") as workdir:
        for ds in args.datasets.split(","):
            total = args.n + args.queries
            vecs, info = synthetic(total, args.dim) if ds == "synthetic" else stdlib_embeddings(total, args.real_dim)
            if len(vecs) < total:
                print(f"{ds}: only {len(vecs)} vectors available", file=sys.stderr)
            queries, base = vecs[:args.queries].copy(), np.ascontiguousarray(vecs[args.queries:])
            truth = exact_neighbours(base, queries, K)
            runs = []
            for r in range(args.repeats):
                order = peers[r % len(peers):] + peers[:r % len(peers)]  # no contender always first
                rows = {}
                for name in order:
                    print(f"{ds} repeat {r + 1}/{args.repeats}: {name} ...", flush=True)
                    t = time.perf_counter()
                    try:
                        rows[name] = run_contender(name, base, queries, truth, args, workdir)
                    except Exception as exc:
                        rows[name] = {"peer": name, "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:]}
                    rows[name]["wall_s"] = round(time.perf_counter() - t, 1)
                    rows[name]["position"] = order.index(name)
                    rows[name]["loadavg_after"] = ingest.loadavg()
                runs.append({name: rows[name] for name in peers})
            summary, ratio_summary = summarise(runs, peers)
            result["datasets"][ds] = {"shape": list(base.shape), "data": info, "peers": summary,
                                      "ratios": ratio_summary, "runs": runs,
                                      "ratios_per_run": [ratios(run) for run in runs]}
            print_table(ds, summary, ratio_summary)
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["loadavg_after"] = ingest.loadavg()
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"peers-{socket.gethostname()}-w{args.workers}.json")
    ingest.write_result(result, "peers", args.workers, path)
    stem = os.path.splitext(path)[0]
    plot(result, stem + ".png")
    plot_cdf(result, stem + "-cdf.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
