"""A damaged write-ahead log record costs that record, not the rest of the file:
the logs of a real engine, killed with its data only in the logs, damaged at
known records; after a restart exactly those records are missing and the
metrics and the log say so.
"""

from __future__ import annotations

import os
import re
import signal
import struct

import numpy as np

from engine.storage.walgen import generations
from metrics import readout
from tests.harness import observe_all, total, wait_for

DIM = 16


def flip(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def logged_records(data_dir, slot):
    """[(path, offset, length, space, ids)] of each complete record in a slot's
    log, walked by the headers' lengths (layout in engine/storage/wal.py),
    without checking or changing anything: the logs are still being written."""
    out = []
    for _, path in generations(data_dir, slot):
        data = open(path, "rb").read()
        off = 0
        while off + 24 <= len(data):
            magic, length = struct.unpack_from("<II", data, off)
            head = 24 if magic in (0x324C4157, 0x334C4157) else 12  # formats 2 and 3; 1
            kind_byte = 1 if magic == 0x334C4157 else 0  # format 3: u8 kind after count and dim
            if off + head + length > len(data):
                break  # an append in progress
            (n,) = struct.unpack_from("<H", data, off + head)
            space = data[off + head + 2:off + head + 2 + n].decode()
            (count,) = struct.unpack_from("<I", data, off + head + 2 + n)
            ids = np.frombuffer(data, "<u8", count, off + head + 2 + n + 8 + kind_byte).copy()
            out.append((path, off, head + length, space, ids))
            off += head + length
    return out


def metric(eng, name):
    """Counter values by worker slot (and reason), summed over writers."""
    return readout.block(eng.inst.metrics, eng.inst.metrics.snapshot(), name)[..., 0]


def test_engine_restarted_on_damaged_logs_loses_only_the_damaged_records(engine_factory):
    """8,000 vectors in 4 spaces logged by 2 workers, no snapshot; the engine is
    killed. Slot A's log gets a flipped payload byte and a flipped header byte
    in two middle records, slot B's log a torn tail. After a restart every
    vector is back except exactly those of the three damaged records, and the
    metrics and the log say so."""
    from engine.producer.routing import home_slot
    first = engine_factory(workers=2, dim=DIM, snapshot_wal_bytes=0, snapshot_interval=0, batch_max=100,
                           steal_threshold=100000)
    spaces = {s: home_slot(s, 2) for s in (f"resync-{k}" for k in range(12))}
    chosen = [s for s in spaces if spaces[s] == 0][:2] + [s for s in spaces if spaces[s] == 1][:2]
    assert len(chosen) == 4, spaces
    rng = np.random.default_rng(21)
    vecs = rng.standard_normal((8000, DIM)).astype(np.float32)
    ids = np.arange(8000, dtype=np.uint64)
    eng = first.engine()
    for k, space in enumerate(chosen):
        for c in range(k * 2000, (k + 1) * 2000, 500):
            observe_all(eng, space, ids[c:c + 500], vecs[c:c + 500])
    wait_for(lambda: total(first) == 8000, 120, message="inserted")
    wait_for(lambda: sum(len(r[4]) for s in (0, 1) for r in logged_records(first.data_dir, s)) == 8000, 60,
             message="every vector in the logs")
    # Every claim committed too: an uncommitted one would be carried over to
    # the next start and reinserted, hiding a loss (queued counts uncommitted records).
    wait_for(lambda: sum(eng.inst.queued_by_lane()) == 0, 30, message="every claim committed")
    pids = [w["pid"] for w in first.status()["workers"]]
    first.disconnect()
    os.killpg(first.proc.pid, signal.SIGKILL)  # no graceful stop: no final snapshot
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    first.proc.wait(30)

    logs = [logged_records(first.data_dir, s) for s in (0, 1)]
    a = 0 if len(logs[0]) >= len(logs[1]) else 1
    recs_a, recs_b = logs[a], logs[1 - a]
    assert len(recs_a) >= 6 and len(recs_b) >= 2, (len(recs_a), len(recs_b))
    bad_payload, bad_header, torn = recs_a[len(recs_a) // 3], recs_a[2 * len(recs_a) // 3], recs_b[-1]
    flip(bad_payload[0], bad_payload[1] + bad_payload[2] - 100)
    flip(bad_header[0], bad_header[1] + 5)
    with open(torn[0], "r+b") as fh:
        fh.truncate(os.path.getsize(torn[0]) - 50)
    lost_ids = np.concatenate([bad_payload[4], bad_header[4], torn[4]])

    second = first.successor()
    try:
        second.start()
        wait_for(lambda: all(w["state"] == "running" for w in second.status()["workers"]), 120,
                 message="both slots recovered")
        st = second.status()
        present = ~np.isin(ids, lost_ids)
        for k, space in enumerate(chosen):
            assert st["spaces"][space]["vectors"] == int(present[k * 2000:(k + 1) * 2000].sum()), space
        eng2 = second.engine()
        for k, space in enumerate(chosen):
            mine = np.arange(k * 2000, (k + 1) * 2000)
            res = eng2.recall(space, vecs[mine], k=1)
            assert res.complete
            assert not np.isin(res.ids[:, 0], lost_ids).any()  # the lost vectors are really gone
            keep = present[mine]
            assert (res.ids[keep, 0] == ids[mine][keep]).mean() >= 0.99
        rs, bs = metric(eng2, "wal_records_skipped_total"), metric(eng2, "wal_bytes_skipped_total")
        assert rs[a].tolist() == [1, 1, 0] and rs[1 - a].tolist() == [0, 0, 0]  # corrupt_header, corrupt_payload, invalid_space
        assert bs[a].tolist() == [bad_header[2], bad_payload[2], 0] and bs[1 - a].sum() == 0
        dropped_records = metric(eng2, "wal_records_dropped_total")
        dropped_bytes = metric(eng2, "wal_bytes_dropped_total")
        assert dropped_records[1 - a] == 1 and dropped_records[a] == 0
        assert dropped_bytes[1 - a] == torn[2] - 50 and dropped_bytes[a] == 0
        assert metric(eng2, "wal_truncations_total").sum() == 1
        log = second.log()
        name_a, name_b = os.path.basename(bad_payload[0]), os.path.basename(torn[0])
        assert re.search(rf"slot {a}: write-ahead log {re.escape(name_a)}: skipped 2 damaged record\(s\), "
                         rf"{bad_payload[2] + bad_header[2]} bytes, in the middle", log), log
        assert re.search(rf"slot {1 - a}: write-ahead log {re.escape(name_b)}: cut off a torn or corrupt "
                         rf"tail of {torn[2] - 50} bytes \(1 record header", log), log
        print(f"\nwritten 8000 vectors; lost {len(lost_ids)} ({len(bad_payload[4])} + {len(bad_header[4])} "
              f"in slot {a}'s damaged records, {len(torn[4])} in slot {1 - a}'s torn tail); skipped "
              f"{bad_payload[2] + bad_header[2]} bytes in the middle of {len(recs_a)} records, cut "
              f"{torn[2] - 50} bytes at the tail")
    finally:
        second.terminate(60)
        second.cleanup()
