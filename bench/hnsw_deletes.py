"""Deletes in hnswlib: memory growth, correctness of the replace path, rebuild cost.

Evidence for reclaiming the memory of forgotten records: reuse deleted slots
(``allow_replace_deleted``), compact (rebuild without the deleted points), or
both. hnswlib as installed (0.8.0 when written), M 16, ef_construction 200,
``num_threads=1``, float32 standard normal vectors (``--dim`` 128), cosine,
ef_search 64 (the engine's defaults), fixed seeds (vectors, queries and
hnswlib's level generator), so every strategy sees the same data.

1. **Growth.** ``--cycles`` cycles; each adds ``--batch`` fresh labels, then
   marks deleted the oldest live batch so that ``--live`` labels stay live
   (the live count swings between live and live + batch). Three strategies,
   each in its own child process so that its RSS is its own:

   * **a** ``mark_deleted`` only; capacity doubles with ``resize_index`` when
     full (as ``engine/worker/shards.py`` does), from ``--initial-capacity``;
   * **b** ``init_index(allow_replace_deleted=True)`` and
     ``add_items(..., replace_deleted=True)``: new labels take deleted slots,
     capacity doubles only when no slot is free;
   * **c** ``mark_deleted``, and after a cycle's deletes, whenever deleted >
     20% of the elements, a rebuild: a new index (capacity for twice the live
     count, by the same doubling rule) filled with ``get_items`` of the
     live labels (streamed as in part 3), which the store tracks itself
     (hnswlib cannot list them: ``get_ids_list`` still holds deleted labels).

   Per cycle: ``get_current_count``, ``get_max_elements``, RSS of the child
   (psutil; its RSS before the index is recorded as the baseline) and the
   time of the adds, the deletes and the rebuild.

2. **Correctness**, in the same child after the cycles:

   * recall@10 of 200 random queries against exact neighbours (numpy) of
     the live set, at ef 10 and 64, next to a fresh index of the same live
     set; self-recall@1 of every live vector; query time; duplicate labels
     within a result row;
   * the slots themselves, read from the index's pickled state
     (``__getstate__``: the level-0 block holds each slot's label and its
     deleted bit; ``label_lookup`` maps label to slot): labels held by more
     than one live slot, live slots whose label the lookup does not know
     (such a label cannot be deleted), ``len(get_ids_list())``;
   * re-adding ``--probe-n`` labels deleted in the last cycle with new
     vectors, through the strategy's own add path (b: ``replace_deleted=True``;
     a, c: plain ``add_items``), then ``--probe-cycles`` more cycles, then
     deleting them again. Each time: self-recall of the new vectors,
     ``get_items`` (equal to the new vector?), the state hnswlib reports (a
     probe ``mark_deleted``: success, then undone with ``unmark_deleted``,
     means live; "already deleted" means in the deleted set; "Label not
     found" means the lookup lost the label), the slots holding the label,
     and after the final delete whether ``knn_query`` still returns the label
     at distance ~0;
   * upsert: ``add_items`` of ``--probe-n`` live labels with new vectors
     (plain; for b also with ``replace_deleted=True``): self-recall of the
     new vector, whether the old vector still finds the label at distance
     ~0, slots per label, and whether ``mark_deleted`` removes it from
     results.

3. **Rebuild cost** (``--rebuild-sizes``), one child per N: an index of N
   live points and N/4 + 1 deleted ones (just over the 20% trigger); the
   time to insert the N from scratch into a fresh index (measured on the
   way: they are the old index's first N inserts), then the rebuild: a new
   index filled by ``get_items`` of 1,000 live labels at a time followed by
   ``add_items`` of them. A rebuild is the same insert of N points plus a
   copy, so the two times should match. RSS with the old index alone and
   with both alive (the peak of a streamed rebuild), and the peak rise of
   one ``get_items`` call for all N labels (hnswlib 0.8 goes through a
   Python list of lists of floats: the reason the rebuild streams).

Default sizes keep the run near 7 minutes on 2 cores: 50 cycles x 1,000
(50,000 labels, not 500,000), because strategy a's insert cost grows with the
number of deleted points (hnswlib's insert search keeps looking until it has
ef_construction live candidates, and it visits deleted ones on the way): 100
cycles of a alone took 724 s on the 2-vCPU VM. 500 cycles of b and c:
``--cycles 500 --strategies b,c --rebuild-sizes ''`` (about 20 minutes).
``--time-cap-s`` stops a strategy's cycles early (recorded).

Usage: python bench/hnsw_deletes.py [--cycles 50] [--batch 1000] [--live 1000]
       [--dim 128] [--strategies a,b,c] [--rebuild-sizes 10000,50000,100000]
Writes bench/results/hnsw_deletes.json and .png (or --out). See bench/README.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

import hnswlib  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

M = 16                  # as bench/ingest.py and the engine's defaults
EF_CONSTRUCTION = 200
EF_SEARCH = 64
K = 10
SEED = 20240611
REBUILD_FRACTION = 0.2  # strategy c rebuilds when deleted > this share of the elements
CHUNK = 1000            # labels per get_items call in a rebuild (see rebuild_into)
ZERO = 1e-4             # a distance below this is "the same vector"
STRATEGIES = {
    "a": "mark_deleted only; resize_index doubles capacity when full",
    "b": "allow_replace_deleted=True + add_items(replace_deleted=True)",
    "c": "mark_deleted + rebuild from get_items of the live labels when deleted > 20% of elements",
}
MB = 1 << 20


# -- helpers ------------------------------------------------------------------------
def rss() -> int:
    return psutil.Process().memory_info().rss


def trim() -> None:
    """Free what Python holds and hand freed heap pages back (glibc ``malloc_trim``)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


def vectors(tag: int, key: int, n: int, dim: int) -> np.ndarray:
    return np.random.default_rng([SEED, tag, key]).standard_normal((n, dim), dtype=np.float32)


def normed(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Row indices into base of the k exact nearest neighbours of each query."""
    if metric == "cosine":
        score = normed(queries) @ normed(base).T
    elif metric == "ip":
        score = queries @ base.T
    else:
        score = -(np.sum(queries ** 2, 1)[:, None] - 2 * queries @ base.T + np.sum(base ** 2, 1)[None, :])
    top = np.argpartition(-score, k, axis=1)[:, :k]
    order = np.take_along_axis(score, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


def new_index(dim: int, metric: str, capacity: int, replace: bool) -> hnswlib.Index:
    index = hnswlib.Index(space=metric, dim=dim)
    index.init_index(max_elements=capacity, M=M, ef_construction=EF_CONSTRUCTION,
                     random_seed=SEED % 100000, allow_replace_deleted=replace)
    index.set_num_threads(1)
    index.set_ef(EF_SEARCH)
    return index


def rebuild_into(old: hnswlib.Index, new: hnswlib.Index, labels: np.ndarray) -> float:
    """Copy the labels' vectors from old into new, CHUNK labels at a time; returns
    the seconds spent in get_items. hnswlib 0.8's get_items builds a Python list
    of lists of floats before the numpy array (about 32 bytes per component), so
    one call for all labels would cost far more memory than the index itself."""
    spent = 0.0
    for lo in range(0, len(labels), CHUNK):
        part = labels[lo:lo + CHUNK]
        t0 = time.perf_counter()
        vecs = old.get_items(part, return_type="numpy")
        spent += time.perf_counter() - t0
        new.add_items(vecs, part, num_threads=1)
    return spent


def grown(capacity: int, need: int) -> int:
    while capacity < need:
        capacity *= 2
    return capacity


class Store:
    """One strategy's index and the bookkeeping a store keeps on its side: the
    number of deleted slots not yet reused (hnswlib 0.8 exposes no count)."""

    def __init__(self, strategy: str, dim: int, metric: str, initial_capacity: int):
        self.strategy, self.dim, self.metric = strategy, dim, metric
        self.initial_capacity = initial_capacity
        self.index = new_index(dim, metric, initial_capacity, strategy == "b")
        self.deleted = 0
        self.rebuilds = 0
        self.resizes = 0

    def _ensure(self, need: int) -> None:
        capacity = self.index.get_max_elements()
        if need > capacity:
            self.index.resize_index(grown(capacity, need))
            self.resizes += 1

    def add(self, labels: np.ndarray, vecs: np.ndarray, replace: bool | None = None) -> None:
        """The strategy's own add path (``replace`` overrides it for b's probes)."""
        replace = self.strategy == "b" if replace is None else replace
        count = self.index.get_current_count()
        if replace:
            reuse = min(self.deleted, len(labels))   # each add takes a free slot while there is one
            self._ensure(count + len(labels) - reuse)
            self.index.add_items(vecs, labels, num_threads=1, replace_deleted=True)
            self.deleted -= reuse
        else:
            self._ensure(count + len(labels))         # an upper bound: a known label is updated in place
            self.index.add_items(vecs, labels, num_threads=1)

    def delete(self, labels) -> None:
        for label in labels:
            self.index.mark_deleted(int(label))
        self.deleted += len(labels)

    def maybe_compact(self, live_labels: np.ndarray) -> bool:
        if self.strategy != "c" or self.deleted <= REBUILD_FRACTION * self.index.get_current_count():
            return False
        self.rebuild(live_labels)
        return True

    def rebuild(self, live_labels: np.ndarray) -> None:
        fresh = new_index(self.dim, self.metric, grown(self.initial_capacity, 2 * len(live_labels)), False)
        rebuild_into(self.index, fresh, live_labels)
        self.index = fresh
        self.deleted = 0
        self.rebuilds += 1


# -- what hnswlib holds -------------------------------------------------------------
def slots(index: hnswlib.Index) -> tuple[np.ndarray, np.ndarray, dict]:
    """(label per slot, deleted bit per slot, lookup label -> slot), from the pickled state."""
    st = index.__getstate__()[0]
    n, size = st["cur_element_count"], st["size_data_per_element"]
    raw = np.asarray(st["data_level0"]).view(np.uint8)[:n * size].reshape(n, size)
    off = st["label_offset"]
    labels = raw[:, off:off + 8].copy().view(np.uint64).ravel()
    deleted = (raw[:, st["offset_level0"] + 2] & 1).astype(bool)   # DELETE_MARK in the level-0 header
    lookup = dict(zip(st["label_lookup_external"].tolist(), st["label_lookup_internal"].tolist()))
    return labels, deleted, lookup


def integrity(index: hnswlib.Index) -> dict:
    labels, deleted, lookup = slots(index)
    live = collections.Counter(labels[~deleted].tolist())
    return {
        "slots": int(len(labels)), "live_slots": int((~deleted).sum()), "deleted_slots": int(deleted.sum()),
        "ids_list_len": len(index.get_ids_list()),
        "labels_in_more_than_one_live_slot": sum(1 for c in live.values() if c > 1),
        "live_slots_unknown_to_lookup": sum(c for lab, c in live.items() if lab not in lookup),
        "lookup_entries_to_slot_of_other_label": sum(1 for lab, s in lookup.items() if int(labels[s]) != lab),
        "lookup_entries_to_deleted_slot": sum(1 for s in lookup.values() if deleted[s]),
    }


def state_of(index: hnswlib.Index, label: int) -> str:
    """What hnswlib says about a label: a probe mark_deleted, undone if it succeeds."""
    try:
        index.mark_deleted(label)
    except RuntimeError as exc:
        msg = str(exc)
        return "deleted" if "already deleted" in msg else "not found" if "not found" in msg else msg
    index.unmark_deleted(label)
    return "live"


def label_report(store: Store, labels: np.ndarray, new: np.ndarray, metric: str) -> dict:
    """Self-recall, get_items and hnswlib's view of each label, and its slots."""
    index = store.index
    found, dist = index.knn_query(new, k=min(K, index.get_current_count()), num_threads=1)
    got_ok = 0
    for label, vec in zip(labels, new):
        try:
            item = index.get_items([int(label)], return_type="numpy")[0]
        except RuntimeError:
            continue
        want = normed(vec[None])[0] if metric == "cosine" else vec
        got_ok += bool(np.allclose(item, want, atol=1e-5))
    states = collections.Counter(state_of(index, int(label)) for label in labels)
    slot_labels, deleted, lookup = slots(index)
    live_slots = collections.Counter(slot_labels[~deleted].tolist())
    dead_slots = collections.Counter(slot_labels[deleted].tolist())
    return {
        "self_recall_at_1": round(float(np.mean(found[:, 0] == labels)), 4),
        "self_recall_at_10": round(float(np.mean([lab in row for lab, row in zip(labels, found)])), 4),
        "get_items_returns_new_vector": got_ok,
        "hnswlib_state": dict(states),
        "in_lookup": sum(int(label) in lookup for label in labels),
        "with_more_than_one_live_slot": sum(live_slots[int(label)] > 1 for label in labels),
        "with_no_live_slot": sum(live_slots[int(label)] == 0 for label in labels),
        "also_in_a_deleted_slot": sum(dead_slots[int(label)] > 0 for label in labels),
    }


def returned_at_zero(index: hnswlib.Index, labels: np.ndarray, vecs: np.ndarray) -> int:
    """How many of these labels knn_query of these vectors returns at distance ~0."""
    found, dist = index.knn_query(vecs, k=min(K, index.get_current_count()), num_threads=1)
    return int(sum(bool(np.any((row == lab) & (d < ZERO))) for lab, row, d in zip(labels, found, dist)))


def safe_add(store: Store, labels: np.ndarray, vecs: np.ndarray, replace: bool | None = None) -> str | None:
    try:
        store.add(labels, vecs, replace)
        return None
    except RuntimeError as exc:
        return str(exc)


# -- child: one strategy ------------------------------------------------------------
def growth_child(a: argparse.Namespace) -> dict:
    trim()
    base_rss = rss()
    store = Store(a.strategy, a.dim, a.metric, a.initial_capacity)
    window: collections.deque = collections.deque()      # (labels, vectors) per live batch, oldest first
    extra: dict[int, np.ndarray] = {}                    # probe labels kept live outside the window
    rows = {k: [] for k in ("cycle", "count", "max_elements", "rss_mb", "add_s", "delete_s", "rebuild_s")}
    state = {"next": 0, "last_deleted": None}

    def live_labels() -> np.ndarray:
        parts = [b[0] for b in window] + [np.fromiter(extra, np.int64, len(extra))]
        return np.concatenate(parts)

    def cycle(c: int, record: bool) -> float:
        labels = np.arange(state["next"], state["next"] + a.batch, dtype=np.int64)
        state["next"] += a.batch
        vecs = vectors(1, c, a.batch, a.dim)
        t0 = time.perf_counter()
        store.add(labels, vecs)
        t1 = time.perf_counter()
        window.append((labels, vecs))
        while sum(len(b[0]) for b in window) > a.live:
            old = window.popleft()
            store.delete(old[0])
            state["last_deleted"] = old
        t2 = time.perf_counter()
        store.maybe_compact(live_labels())
        t3 = time.perf_counter()
        if record:
            for k, v in (("cycle", c), ("count", store.index.get_current_count()),
                         ("max_elements", store.index.get_max_elements()), ("rss_mb", round(rss() / MB, 2)),
                         ("add_s", round(t1 - t0, 5)), ("delete_s", round(t2 - t1, 5)),
                         ("rebuild_s", round(t3 - t2, 5))):
                rows[k].append(v)
        return t3 - t0

    spent, stopped = 0.0, None
    for c in range(a.cycles):
        spent += cycle(c, True)
        if (c + 1) % max(1, a.cycles // 10) == 0:
            print(f"  [{a.strategy}] cycle {c + 1}/{a.cycles}: count {rows['count'][-1]:,}, "
                  f"RSS {rows['rss_mb'][-1]:.1f} MB, {spent:.0f} s", file=sys.stderr, flush=True)
        if a.time_cap_s and spent > a.time_cap_s and c + 1 < a.cycles:
            stopped = c + 1
            break
    cycles_run = len(rows["cycle"])
    final = {
        "cycles_run": cycles_run, "stopped_early_by_time_cap": stopped is not None,
        "labels_added": state["next"], "live": int(len(live_labels())),
        "count": store.index.get_current_count(), "max_elements": store.index.get_max_elements(),
        "deleted_not_reused": store.deleted, "rebuilds": store.rebuilds, "resizes": store.resizes,
        "rss_mb": round(rss() / MB, 2), "baseline_rss_mb": round(base_rss / MB, 2),
        "index_rss_mb": round((rss() - base_rss) / MB, 2),
        "cycle_s_total": round(spent, 3), "cycle_s_mean": round(spent / cycles_run, 5),
        "cycle_s_last10pct_mean": round(float(np.mean(
            [sum(x) for x in zip(rows["add_s"], rows["delete_s"], rows["rebuild_s"])][-max(1, cycles_run // 10):])), 5),
        "add_ms_per_label_mean": round(1000 * sum(rows["add_s"]) / (cycles_run * a.batch), 4),
        "rebuild_s_total": round(sum(rows["rebuild_s"]), 3),
    }
    trim()
    final["rss_mb_after_malloc_trim"] = round(rss() / MB, 2)

    # -- recall of the live set after the cycles --
    labels = live_labels()
    live_vecs = np.concatenate([b[1] for b in window])
    queries = vectors(3, 0, a.queries, a.dim)
    truth = labels[exact(live_vecs, queries, K, a.metric)]
    quality = {}
    for name, index in (("index", store.index), ("fresh_index_of_live_set", None)):
        if index is None:
            index = new_index(a.dim, a.metric, len(labels), False)
            index.add_items(live_vecs, labels, num_threads=1)
        row = {}
        for ef in (10, EF_SEARCH):
            index.set_ef(max(ef, K))
            t0 = time.perf_counter()
            found, _ = index.knn_query(queries, k=K, num_threads=1)
            row[f"query_ms_ef{ef}"] = round(1000 * (time.perf_counter() - t0) / len(queries), 4)
            row[f"recall_at_10_ef{ef}"] = round(float(np.mean(
                [len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)])), 4)
        index.set_ef(EF_SEARCH)
        found, _ = index.knn_query(live_vecs, k=K, num_threads=1)
        row["self_recall_at_1_ef64"] = round(float(np.mean(found[:, 0] == labels)), 4)
        row["rows_with_a_duplicate_label"] = int(sum(len(set(r.tolist())) < len(r) for r in found))
        quality[name] = row
    store.index.set_ef(EF_SEARCH)
    result = {"strategy": a.strategy, "what": STRATEGIES[a.strategy], "per_cycle": rows, "final": final,
              "quality": quality, "integrity_after_cycles": integrity(store.index)}

    # -- probes: re-add deleted labels; upsert live labels --
    rng_pick = np.random.default_rng([SEED, 7])
    probes = {}
    last = state["last_deleted"]
    if last is not None:
        pick = np.sort(rng_pick.choice(len(last[0]), min(a.probe_n, len(last[0])), replace=False))
        re_labels, old_vecs = last[0][pick], last[1][pick]
        new_vecs = vectors(4, 0, len(re_labels), a.dim)
        if a.strategy == "b":
            # plain add_items (no replace_deleted) of other labels of that batch
            rest = np.setdiff1d(np.arange(len(last[0])), pick)[:10]
            err = safe_add(store, last[0][rest], vectors(4, 1, len(rest), a.dim), False)
            probes["readd_deleted_labels_plain_add"] = {
                "labels": len(rest), "add_error": err,
                "hnswlib_state_after": dict(collections.Counter(state_of(store.index, int(x))
                                                                for x in last[0][rest]))}
        before = collections.Counter(state_of(store.index, int(x)) for x in re_labels)
        err = safe_add(store, re_labels, new_vecs)
        p = {"labels": len(re_labels), "state_before": dict(before), "add_error": err}
        if err is None and a.strategy != "b":
            store.deleted -= before.get("deleted", 0)   # plain add_items revives a deleted label in place
        if err is None:
            extra.update({int(x): v for x, v in zip(re_labels, new_vecs)})
            p["after_readd"] = label_report(store, re_labels, new_vecs, a.metric)
            p["after_readd"]["old_vector_returns_label_at_0"] = returned_at_zero(store.index, re_labels, old_vecs)
            # more churn; the store keeps the re-added labels live (rebuilds include them)
            try:
                for c in range(a.probe_cycles):
                    cycle(cycles_run + c, False)
                p["churn_error"] = None
            except RuntimeError as exc:
                p["churn_error"] = str(exc)
            p[f"after_{a.probe_cycles}_more_cycles"] = label_report(store, re_labels, new_vecs, a.metric)
            outcome = collections.Counter()
            for x in re_labels:
                try:
                    store.index.mark_deleted(int(x))
                    store.deleted += 1
                    outcome["deleted"] += 1
                except RuntimeError as exc:
                    outcome[str(exc)] += 1
                extra.pop(int(x), None)
            p["forget_again"] = {"mark_deleted": dict(outcome),
                                 "still_returned_at_0": returned_at_zero(store.index, re_labels, new_vecs)}
        probes["readd_deleted_labels"] = p
    cycles_run += a.probe_cycles

    variants = [("upsert_live_labels_plain_add", False)]
    if a.strategy == "b":
        variants.append(("upsert_live_labels_replace_deleted", True))
    newest = window[-1]
    picks = rng_pick.choice(len(newest[0]), min(len(newest[0]), a.probe_n * len(variants)), replace=False)
    for i, (name, replace) in enumerate(variants):
        pick = np.sort(picks[i * a.probe_n:(i + 1) * a.probe_n])
        up_labels, old_vecs = newest[0][pick], newest[1][pick]
        new_vecs = vectors(5, i, len(up_labels), a.dim)
        p = {"labels": len(up_labels), "free_slots_before": store.deleted,
             "count_before": store.index.get_current_count()}
        p["add_error"] = safe_add(store, up_labels, new_vecs, replace)
        p["count_after"] = store.index.get_current_count()
        if p["add_error"] is None:
            p["after_upsert"] = label_report(store, up_labels, new_vecs, a.metric)
            p["after_upsert"]["old_vector_returns_label_at_0"] = returned_at_zero(store.index, up_labels, old_vecs)
            outcome = collections.Counter()
            for x in up_labels:
                try:
                    store.index.mark_deleted(int(x))
                    outcome["deleted"] += 1
                except RuntimeError as exc:
                    outcome[str(exc)] += 1
            p["after_mark_deleted"] = {
                "mark_deleted": dict(outcome),
                "old_vector_returns_label_at_0": returned_at_zero(store.index, up_labels, old_vecs),
                "new_vector_returns_label_at_0": returned_at_zero(store.index, up_labels, new_vecs)}
        probes[name] = p
    result["probes"] = probes
    result["integrity_after_probes"] = integrity(store.index)
    return result


# -- child: rebuild cost ------------------------------------------------------------
def rebuild_child(a: argparse.Namespace) -> dict:
    n = a.n
    dead = n // 4 + 1
    trim()
    base = rss()
    vecs = vectors(6, n, n + dead, a.dim)
    labels = np.arange(n + dead, dtype=np.int64)
    old = new_index(a.dim, a.metric, n + dead, False)
    t0 = time.perf_counter()
    old.add_items(vecs[:n], labels[:n], num_threads=1)
    scratch = time.perf_counter() - t0
    old.add_items(vecs[n:], labels[n:], num_threads=1)
    for x in labels[n:]:
        old.mark_deleted(int(x))
    del vecs
    trim()
    rss_old = rss()
    t0 = time.perf_counter()
    new = new_index(a.dim, a.metric, n, False)
    get_s = rebuild_into(old, new, labels[:n])
    rebuild = time.perf_counter() - t0
    trim()                                  # hand back the freed get_items buffers: old + new remain
    rss_both = rss()
    del new
    trim()
    # the same copy in one get_items call, for its transient memory
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pre = rss()
    t0 = time.perf_counter()
    once = old.get_items(labels[:n], return_type="numpy")
    once_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del once, old
    trim()
    return {"n_live": n, "n_deleted": dead, "deleted_share": round(dead / (n + dead), 4),
            "insert_from_scratch_s": round(scratch, 3), "rebuild_s": round(rebuild, 3),
            "rebuild_get_items_s": round(get_s, 3), "rebuild_over_scratch": round(rebuild / scratch, 3),
            "baseline_rss_mb": round(base / MB, 1),
            "rss_old_index_mb": round((rss_old - base) / MB, 1),
            "rss_old_and_new_mb": round((rss_both - base) / MB, 1),
            "rss_new_index_mb": round((rss_both - rss_old) / MB, 1),
            "get_items_one_call_s": round(once_s, 3),
            "get_items_one_call_peak_rise_mb": round((peak - pre) / MB, 1) if peak > peak_before else None,
            "get_items_one_call_bytes_per_component": round((peak - pre) / (n * a.dim), 1)
            if peak > peak_before else None,
            "vectors_mb": round(n * a.dim * 4 / MB, 1),
            "note": f"RSS above the child's baseline (before the vectors were generated); the rebuild "
                    f"streams get_items in chunks of {CHUNK} into the new index; the one-call get_items "
                    f"peak rise is the process peak minus RSS before the call (None: below an earlier peak)"}


# -- parent -------------------------------------------------------------------------
def run_child(args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    try:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child-out", path] + args, check=True)
        with open(path) as fh:
            return json.load(fh)
    finally:
        os.unlink(path)


def plot(result: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    p = result["parameters"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = {"a": "tab:red", "b": "tab:blue", "c": "tab:green"}
    for s, g in result["growth"].items():
        rows, col = g["per_cycle"], colours[s]
        x = np.array(rows["cycle"]) + 1
        axes[0].plot(x, rows["count"], color=col, label=f"{s}: element count")
        axes[0].plot(x, rows["max_elements"], color=col, ls="--", lw=1, label=f"{s}: max elements")
        axes[1].plot(x, np.array(rows["rss_mb"]) - g["final"]["baseline_rss_mb"], color=col, label=s)
        axes[2].plot(x, np.array(rows["add_s"]) + np.array(rows["delete_s"]) + np.array(rows["rebuild_s"]),
                     color=col, label=s)
    axes[0].set(yscale="log", title="elements (solid) and capacity (dashed)")
    axes[1].set(title="child RSS above its baseline (MB)")
    axes[2].set(yscale="log", title="seconds per cycle")
    for ax in axes:
        ax.set_xlabel(f"cycle (+{p['batch']:,} labels, then delete the oldest {p['batch']:,})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"hnswlib {result['hnswlib']}: dim {p['dim']}, {p['metric']}, M {M}, ef_c {EF_CONSTRUCTION}, "
                 f"{p['live']:,} live; a = mark_deleted, b = replace_deleted, c = rebuild at >20% deleted",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--metric", choices=("cosine", "l2", "ip"), default="cosine")
    p.add_argument("--cycles", type=int, default=50)
    p.add_argument("--batch", type=int, default=1000, help="fresh labels added per cycle")
    p.add_argument("--live", type=int, default=1000, help="labels kept live after each cycle's deletes")
    p.add_argument("--initial-capacity", type=int, default=1024, help="as the engine's --shard-initial-capacity")
    p.add_argument("--strategies", default="a,b,c")
    p.add_argument("--time-cap-s", type=float, default=0, help="stop a strategy's cycles after this (0: never)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--probe-n", type=int, default=100)
    p.add_argument("--probe-cycles", type=int, default=3)
    p.add_argument("--rebuild-sizes", default="10000,50000,100000", help="'' to skip part 3")
    p.add_argument("--out", default=None)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_out:
        out = growth_child(args) if args.strategy else rebuild_child(args)
        with open(args.child_out, "w") as fh:
            json.dump(out, fh)
        return 0

    strategies = [s for s in args.strategies.split(",") if s]
    if any(s not in STRATEGIES for s in strategies):
        p.error(f"--strategies: choose from {','.join(STRATEGIES)}")
    sizes = [int(x) for x in args.rebuild_sizes.split(",") if x]
    common = ["--dim", str(args.dim), "--metric", args.metric]
    result = {"benchmark": "hnsw_deletes", "command": " ".join([sys.executable] + sys.argv),
              "hnswlib": metadata.version("hnswlib"), "numpy": np.__version__,
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "loadavg_before": loadavg(),
              "parameters": {"dim": args.dim, "metric": args.metric, "M": M, "ef_construction": EF_CONSTRUCTION,
                             "ef_search": EF_SEARCH, "num_threads": 1, "cycles": args.cycles,
                             "batch": args.batch, "live": args.live, "labels_total": args.cycles * args.batch,
                             "initial_capacity": args.initial_capacity, "rebuild_fraction": REBUILD_FRACTION,
                             "time_cap_s": args.time_cap_s, "queries": args.queries, "probe_n": args.probe_n,
                             "probe_cycles": args.probe_cycles, "rebuild_sizes": sizes, "seed": SEED},
              "strategies": {s: STRATEGIES[s] for s in strategies}, "growth": {}, "rebuild": []}
    t_start = time.perf_counter()
    for s in strategies:
        t0 = time.perf_counter()
        g = run_child(common + ["--strategy", s, "--cycles", str(args.cycles), "--batch", str(args.batch),
                                "--live", str(args.live), "--initial-capacity", str(args.initial_capacity),
                                "--time-cap-s", str(args.time_cap_s), "--queries", str(args.queries),
                                "--probe-n", str(args.probe_n), "--probe-cycles", str(args.probe_cycles)])
        result["growth"][s] = g
        f, q = g["final"], g["quality"]["index"]
        print(f"{s}: {f['cycles_run']} cycles  count {f['count']:,}  max {f['max_elements']:,}  "
              f"index RSS {f['index_rss_mb']:.1f} MB  {f['cycle_s_mean']:.3f} s/cycle "
              f"(last 10% {f['cycle_s_last10pct_mean']:.3f})  recall@10 ef10 {q['recall_at_10_ef10']:.4f} "
              f"ef64 {q['recall_at_10_ef64']:.4f}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    if "a" in result["growth"]:
        rows = result["growth"]["a"]["per_cycle"]
        added = (np.array(rows["cycle"]) + 1) * args.batch
        slope = float(np.polyfit(added, np.array(rows["rss_mb"]) * MB, 1)[0]) if len(added) > 1 else None
        level0 = 4 + 2 * M * 4 + 4 * args.dim + 8   # links, vector, label per slot of the base layer
        result["a_growth_model"] = {
            "rss_bytes_per_label_added": round(slope) if slope else None,
            "level0_bytes_per_slot": level0,
            "rss_mb_at_500k_labels_extrapolated": round(slope * 500000 / MB, 1) if slope else None,
            "note": "a never frees a slot: RSS grows by this slope per label ever added; the base layer "
                    "is 4 + 8M + 4*dim + 8 bytes per slot (plus a mutex, a level, a lookup entry)"}
        print(f"a: RSS grows {slope:.0f} bytes per label added (base layer {level0} B/slot); "
              f"at 500,000 labels about {slope * 500000 / MB:.0f} MB", flush=True)
    if "c" in result["growth"]:
        c = result["growth"]["c"]["final"]
        result["ratio_to_c"] = {s: {k: round(g["final"][k] / c[k], 3) if c[k] else None
                                    for k in ("count", "max_elements", "index_rss_mb", "cycle_s_mean",
                                              "cycle_s_last10pct_mean")}
                                for s, g in result["growth"].items()}
        for s, r in result["ratio_to_c"].items():
            print(f"  {s}/c: {r}")
    for n in sizes:
        r = run_child(common + ["--n", str(n)])
        result["rebuild"].append(r)
        print(f"rebuild N={n:,}: scratch {r['insert_from_scratch_s']:.2f} s  rebuild {r['rebuild_s']:.2f} s "
              f"(x{r['rebuild_over_scratch']:.2f})  RSS old {r['rss_old_index_mb']} MB, old+new "
              f"{r['rss_old_and_new_mb']} MB; get_items of all {n:,} in one call: "
              f"+{r['get_items_one_call_peak_rise_mb']} MB peak, {r['get_items_one_call_s']:.2f} s", flush=True)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["loadavg_after"] = loadavg()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "hnsw_deletes.json")
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {out}")
    plot(result, os.path.splitext(out)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
