"""Dead-letter files: batches set aside because they killed a worker twice.

``<data-dir>/deadletter/slot-<i>.jsonl``, one JSON object per batch: time,
slot, ring and position of the claim, the reason, the spaces, the ids and the
vectors (so an operator can inspect, fix and resubmit them). Written only by
the worker of slot i; read by ``engram-stream deadletter``.
"""

from __future__ import annotations

import glob
import json
import os


def directory(data_dir: str) -> str:
    return os.path.join(data_dir, "deadletter")


def append(data_dir: str, slot: int, record: dict) -> str:
    os.makedirs(directory(data_dir), mode=0o700, exist_ok=True)
    path = os.path.join(directory(data_dir), f"slot-{slot}.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_all(data_dir: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(directory(data_dir), "slot-*.jsonl"))):
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        out.append({"reason": f"unreadable line in {path}"})
    return out
