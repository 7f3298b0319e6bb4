"""Checks and plans made before any shared memory exists (supervisor start-up).

Each either returns a plan or raises an error that names the problem, so a
bad start fails before it creates anything: CPUs and worker count, instance
parameters, a live instance holding the name (a dead one's leftovers are
removed), room in /dev/shm, a bindable exporter address.
"""

from __future__ import annotations

import logging
import os


from engine.config import Params
from engine.errors import ConfigError, InstanceRunning
from engine.control.layouts import required_bytes
from engine.control.instance import pid_alive, read_header, read_params
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


def check_name_free(name: str) -> bool:
    """Refuse if a live instance uses ``name``; True if a dead one left objects behind."""
    try:
        seg = Segment.attach(object_name(name, "ctl"))
    except SegmentMissing:
        seg = None
    if seg is not None:
        try:
            read_params(seg.buf)
            pid = read_header(seg.buf).sup_pid
        except LayoutError:
            pid = 0
        finally:
            seg.close()
        if pid and pid != os.getpid() and pid_alive(pid):
            raise InstanceRunning(f"an engram instance named {name!r} is already running "
                                  f"(supervisor pid {pid}); stop it or choose another --name")
    return bool(instance_objects(name))


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


def check_shm_room(params: dict, shm_dir: str = "/dev/shm") -> None:
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


def check_wal_manifest(data_dir: str, params: dict) -> None:
    """The write-ahead logs of a data directory belong to one shape of engine:
    a start with another worker count, dimension or metric would leave some
    logs unread or unreadable, so it is refused rather than silently losing data.
    The first start writes ``<data-dir>/wal/manifest.json``."""
    import json
    shape = {"slots": params.slots, "dim": params.dim, "metric": params.metric}
    wal_dir = os.path.join(data_dir, "wal")
    path = os.path.join(wal_dir, "manifest.json")
    try:
        with open(path) as fh:
            found = json.load(fh)
    except FileNotFoundError:
        found = None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); move it aside only if the logs beside it "
                          f"are not needed") from None
    if found is not None and {k: found.get(k) for k in shape} != shape:
        raise ConfigError(
            f"--data-dir={data_dir!r} holds write-ahead logs of an engine with {found.get('slots')} "
            f"workers, dim {found.get('dim')}, metric {found.get('metric')}; start with --workers "
            f"{found.get('slots')} --dim {found.get('dim')} --metric {found.get('metric')}, or use "
            f"another --data-dir (this one keeps its data)")
    os.makedirs(wal_dir, mode=0o700, exist_ok=True)
    if found is None:
        with open(path + ".tmp", "w") as fh:
            json.dump(shape, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(path + ".tmp", path)
