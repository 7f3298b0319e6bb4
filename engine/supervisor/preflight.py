"""Checks and plans made before any shared memory exists (supervisor start-up).

Each either returns a plan or raises an error that names the problem, so a
bad start fails before it creates anything: CPUs and worker count, instance
parameters, a live instance holding the name (a dead one's leftovers are
removed), room in /dev/shm, a bindable exporter address.
"""

from __future__ import annotations

import json
import logging
import os


from engine.config import Params
from engine.errors import ConfigError, InstanceRunning
from engine.fsutil import atomic_write
from engine.control.layouts import required_bytes
from engine.control.instance import read_header, read_params
from shm.lock import InstanceLock
from shm.errors import LayoutError, SegmentMissing
from shm.segment import Segment, instance_objects, object_name

log = logging.getLogger("engram.supervisor")


def plan_cpus(cfg) -> tuple[int, list[int | None]]:
    """Number of workers and the CPU of each (None when not pinned)."""
    usable = sorted(os.sched_getaffinity(0))
    cpus = list(cfg.cpus) if cfg.cpus else usable
    outside = [c for c in cpus if c not in usable]
    if outside:
        raise ConfigError(f"--cpus={','.join(map(str, cfg.cpus))}: CPU(s) {outside} are not in this "
                          f"process's affinity {usable}")
    if cfg.workers == "auto":
        n = max(1, round(len(cpus) * cfg.workers_per_core))
    else:
        n = cfg.workers
    if cfg.no_pin:
        return n, [None] * n
    return n, [cpus[i % len(cpus)] for i in range(n)]


def instance_params(cfg, slots: int, cpus: list[int | None]) -> Params:
    return Params.plan(cfg, slots, cpus)


def check_name_free(name: str, data_dir: str) -> bool:
    """Refuse if a live instance uses ``name``; True if a dead one left objects behind.

    Live means its supervisor still holds the lock of its data directory (a
    pid is no proof: a dead supervisor's pid may be another process's now).
    The caller holds ``data_dir``'s lock already, so a run of the same data
    directory is dead by construction."""
    try:
        seg = Segment.attach(object_name(name, "ctl"))
    except SegmentMissing:
        seg = None
    if seg is not None:
        try:
            params = read_params(seg.buf)
            pid = read_header(seg.buf).sup_pid
        except LayoutError:
            params, pid = None, 0
        finally:
            seg.close()
        if params is not None and os.path.abspath(params.data_dir) != os.path.abspath(data_dir) \
                and _lock_held(os.path.join(params.data_dir, "LOCK")):
            raise InstanceRunning(f"an engram instance named {name!r} is already running "
                                  f"(supervisor pid {pid}, data directory {params.data_dir}); stop it or "
                                  f"choose another --name")
    return bool(instance_objects(name))


def _lock_held(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return InstanceLock.held(fd)
    finally:
        os.close(fd)


def check_bindable(addr: str, flag: str) -> None:
    """Fail at start, not in a child's restart loop, if ``addr`` cannot be bound."""
    import socket
    from metrics.exporter import parse_addr
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{flag}={addr!r}: cannot listen there: {exc.strerror}") from None


def check_gateway_files(cfg) -> None:
    """The token and TLS files the gateway will read exist, are readable and not empty."""
    for flag, path in (("--auth-token-file", cfg.auth_token_file), ("--tls-cert", cfg.tls_cert),
                       ("--tls-key", cfg.tls_key)):
        if path is None:
            continue
        try:
            with open(path, "rb") as fh:
                empty = not fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"{flag}={path!r}: {exc.strerror}") from None
        if empty:
            raise ConfigError(f"{flag}={path!r}: the file is empty")


def check_shm_room(params: Params, shm_dir: str = "/dev/shm") -> None:
    """Fail before creating anything if /dev/shm cannot hold the instance:
    tmpfs allocates on first touch, so an overfull one would SIGBUS a worker.
    A dead run's segments of the same name are about to be removed: they count as free."""
    need = required_bytes(params)
    st = os.statvfs(shm_dir)
    reclaimable = 0
    for _, obj in instance_objects(params.name, shm_dir):
        try:
            reclaimable += os.stat(os.path.join(shm_dir, obj.lstrip("/"))).st_blocks * 512
        except OSError:
            pass
    free = st.f_bavail * st.f_frsize + reclaimable
    if need > free:
        raise ConfigError(f"this configuration needs {need / 2**20:.0f} MiB of shared memory but {shm_dir} "
                          f"has {free / 2**20:.0f} MiB free; lower --capacity-* or --dim, or enlarge "
                          f"{shm_dir} (e.g. docker --shm-size)")


def _manifest_path(data_dir: str) -> str:
    return os.path.join(data_dir, "wal", "manifest.json")


def _shape(params: Params) -> dict:
    return {"slots": params.slots, "dim": params.dim, "metric": params.metric, "hnsw_m": params.hnsw_m,
            "ef_construction": params.ef_construction}


def check_wal_manifest(data_dir: str, params: Params) -> None:
    """The write-ahead logs and snapshots of a data directory belong to one
    shape of engine: a start with another worker count, dimension or metric
    would leave some logs unread or unreadable, and another ``--hnsw-m`` or
    ``--ef-construction`` would be ignored by the shards loaded from disk
    (hnswlib keeps the values an index was built with). Such a start is
    refused, naming the flags to give, rather than losing data or silently
    running with other values. Reads only; ``write_wal_manifest`` records
    the shape."""
    path = _manifest_path(data_dir)
    try:
        with open(path) as fh:
            found = json.load(fh)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); move it aside only if the logs beside it "
                          f"are not needed") from None
    flags = {"slots": "--workers", "dim": "--dim", "metric": "--metric", "hnsw_m": "--hnsw-m",
             "ef_construction": "--ef-construction"}
    # A manifest of an older version lacks the HNSW keys: those are not checked (and are recorded).
    differ = {k: v for k, v in _shape(params).items() if k in found and found[k] != v}
    if differ:
        given = " ".join(f"{flags[k]}={v}" for k, v in differ.items())
        keep = " ".join(f"{flags[k]} {found[k]}" for k in differ)
        built = (f"{found.get('slots')} workers, dim {found.get('dim')}, metric {found.get('metric')}"
                 + "".join(f", {flags[k][2:]} {found[k]}" for k in ("hnsw_m", "ef_construction") if k in found))
        raise ConfigError(f"--data-dir={data_dir!r} holds write-ahead logs of an engine with {built}; {given} "
                          f"given: start with {keep}, or use another --data-dir (this one keeps its data)")


def write_wal_manifest(data_dir: str, params: Params) -> None:
    """Record the shape ``check_wal_manifest`` accepted (first start, or keys an older manifest lacks)."""
    path = _manifest_path(data_dir)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        with open(path) as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        found = {}
    shape = {**_shape(params), **found}
    if shape != found:
        atomic_write(path, json.dumps(shape).encode())


