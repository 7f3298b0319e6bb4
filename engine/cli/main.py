"""``engram-stream`` / ``python -m engine``: run, status, load, recall, forget, stop and the other commands.

Only this module decides exit codes (STYLE §9); see docs/operations.md.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process, set before numpy loads: every worker
# owns exactly one core (DESIGN §3). Explicit user settings win.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from engine import config  # noqa: E402
from engine import exitcodes  # noqa: E402
from engine.errors import ConfigError, EngineError, InstanceRunning  # noqa: E402

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-stream", description="Streaming vector ingestion engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in config.COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        config.add_arguments(p, name)
        if name == "breaker":
            from engine.cli import breaker
            breaker.add_arguments(p)
        if name == "cluster":
            p.add_argument("action", choices=("status", "drain"), help="status, or drain HOST")
            p.add_argument("host", nargs="?", default=None, help="the host to drain")
            p.add_argument("--json", dest="json_out", action="store_true", help="Print JSON.")
    return parser


def setup_logging(cfg) -> None:
    from engine import logfmt
    logfmt.configure(getattr(cfg, "log_level", "info"), getattr(cfg, "log_format", "text"),
                     instance=getattr(cfg, "name", ""))


def cmd_run(cfg) -> int:
    from engine.cli.entries import supervisor
    return supervisor(cfg).run()


def cmd_cluster(cfg) -> int:
    from engine.cluster import admin
    if cfg.cluster is None:
        raise ConfigError("cluster commands need --cluster NAME and --nats URL[,URL...]")
    if cfg.action == "drain":
        if not cfg.host:
            raise ConfigError("cluster drain needs the HOST to drain")
        print(admin.drain(cfg, cfg.host))
        return exitcodes.OK
    report = admin.status(cfg)
    print(json.dumps(report) if cfg.json_out else admin.render(report))
    return exitcodes.OK


def cmd_status(cfg) -> int:
    from engine.producer.api import connect
    with connect(cfg.name) as eng:
        st = eng.status(cfg.interval)
    if cfg.json:
        print(json.dumps(st))
    else:
        from engine.cli.status import render
        print(render(st))
    return exitcodes.OK


def cmd_top(cfg) -> int:
    from engine.cli import top
    from engine.producer.api import connect
    with connect(cfg.name) as eng:
        return top.run(eng.inst, cfg.interval, cfg.count)


def cmd_stop(cfg) -> int:
    from engine.producer.api import connect
    with connect(cfg.name) as eng:
        pid = int(eng.inst.header.sup_pid)
        data_dir = eng.params.data_dir
    record_path = os.path.join(data_dir, "last-exit.json")
    os.kill(pid, signal.SIGTERM)
    print(f"sent SIGTERM to supervisor pid {pid}; waiting for the drain", file=sys.stderr)
    deadline = time.monotonic() + cfg.timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return _report_exit(cfg.name, pid, record_path)
        time.sleep(0.1)
    print(f"instance {cfg.name!r} still running after {cfg.timeout:.0f}s", file=sys.stderr)
    return exitcodes.ERROR


def _running(pid: int) -> bool:
    """True while ``pid`` runs; an exited process its parent has not reaped yet counts as gone."""
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _report_exit(name: str, pid: int, record_path: str) -> int:
    try:
        with open(record_path) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = None
    if record is None or record.get("pid") != pid:
        print(f"instance {name!r} stopped (no exit record found)")
        return exitcodes.OK
    print(f"instance {name!r} stopped: {record['reason']} (exit code {record['exit_code']})")
    # A backlog saved for the next start is a clean stop too: nothing acknowledged was lost.
    return exitcodes.OK if record["exit_code"] in (exitcodes.OK, exitcodes.BACKLOG) else exitcodes.ERROR


def cmd_recall(cfg) -> int:
    import numpy as np
    from engine.producer.api import connect
    with connect(cfg.name) as eng:
        if cfg.vector is not None:
            query = np.array(cfg.vector, dtype=np.float32)
        elif cfg.random:
            query = np.random.default_rng().standard_normal(eng.dim).astype(np.float32)
        else:
            raise ConfigError("recall needs --random or --vector X,Y,...")
        t0 = time.perf_counter()
        res = eng.recall(cfg.space, query, k=cfg.k, ef=cfg.ef, fresh=cfg.fresh)
        ms = (time.perf_counter() - t0) * 1000
    if cfg.json:
        print(json.dumps({"ids": res.ids[0].tolist(), "distances": res.distances[0].tolist(),
                          "complete": res.complete, "ms": round(ms, 3)}))
        return exitcodes.OK
    print(f"space {cfg.space}: {res.ids.shape[1]} result(s) in {ms:.2f} ms"
          f"{'' if res.complete else ' (INCOMPLETE: a shard did not answer)'}")
    for rank, (i, d) in enumerate(zip(res.ids[0], res.distances[0]), 1):
        print(f"{rank:>3}  id {int(i):<20}  distance {float(d):.6f}")
    return exitcodes.OK


def cmd_forget(cfg) -> int:
    from engine.cli import forget
    # 1 when ids were refused or not applied within --wait (the output says which)
    return exitcodes.OK if forget.run(cfg) else exitcodes.ERROR


def cmd_load(cfg) -> int:
    from engine.cli.loadgen import run_load
    return run_load(cfg)


def cmd_deadletter(cfg) -> int:
    from engine.storage import deadletter
    records = deadletter.read_all(cfg.data_dir)
    if cfg.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "vectors"} for r in records]))
        return exitcodes.OK
    if not records:
        print(f"no dead-lettered batches in {cfg.data_dir}")
        return exitcodes.OK
    for r in records:
        ids = r.get("ids", [])
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("time", 0)))
        print(f"{when}  slot {r.get('slot')}  {len(ids)} observation(s) of {', '.join(r.get('spaces', []))}"
              f"  ids {ids[0] if ids else '-'}..{ids[-1] if ids else '-'}  reason: {r.get('reason')}")
    return exitcodes.OK


def cmd_breaker(cfg) -> int:
    from engine.cli import breaker
    from engine.producer.api import connect
    with connect(cfg.name) as eng:
        print(breaker.run(eng, cfg.slot, cfg.action))
    return 0


def cmd_tune(cfg) -> int:
    from engine.cli import tune
    return tune.run(cfg)


HANDLERS = {"run": cmd_run, "status": cmd_status, "load": cmd_load, "recall": cmd_recall, "forget": cmd_forget,
            "stop": cmd_stop,
            "deadletter": cmd_deadletter, "top": cmd_top, "tune": cmd_tune,
            "breaker": cmd_breaker, "cluster": cmd_cluster}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.resolve(args, args.command)
        if args.command == "breaker":  # positional arguments, not settings
            cfg = type(cfg)({**cfg.values, "slot": args.slot, "action": args.action}, cfg.explicit)
        if args.command == "cluster":
            cfg = type(cfg)({**cfg.values, "action": args.action, "host": args.host, "json_out": args.json_out},
                            cfg.explicit)
    except ConfigError as exc:
        print(f"engram-stream {args.command}: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    setup_logging(cfg)
    try:
        return HANDLERS[args.command](cfg)
    except ConfigError as exc:
        print(f"engram-stream {args.command}: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except InstanceRunning as exc:
        print(f"engram-stream {args.command}: {exc}", file=sys.stderr)
        return exitcodes.RUNNING
    except EngineError as exc:
        print(f"engram-stream {args.command}: {exc}", file=sys.stderr)
        return exitcodes.ERROR
    except KeyboardInterrupt:
        return exitcodes.FORCED


def entry() -> None:
    sys.exit(main())
