"""Configuration, declared once.

Every setting is one ``Setting`` (name, type, default, help). From that one
declaration come the command-line flag ``--<name>``, the environment variable
``ENGRAM_<NAME>``, the TOML key ``<name>`` (``--config file.toml``) and the
table in ``docs/configuration.md`` (``render_markdown``). Precedence:
command line > environment > TOML file > default.

Validators raise ``ConfigError`` naming the flag and the bad value.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.errors import ConfigError

SPACE_RE = re.compile(r"^[a-z0-9_-]{3,64}$")
NAME_RE = re.compile(r"^[a-z0-9_-]{1,48}$")


def _positive_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError("must be a positive integer")
    return n


def _non_negative_int(v: Any) -> int:
    n = int(v)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def _non_negative_float(v: Any) -> float:
    x = float(v)
    if not x >= 0:
        raise ValueError("must be >= 0")
    return x


def _positive_float(v: Any) -> float:
    x = float(v)
    if not x > 0:
        raise ValueError("must be > 0")
    return x


def _workers(v: Any) -> int | str:
    if str(v).strip().lower() == "auto":
        return "auto"
    return _positive_int(v)


def _name(v: Any) -> str:
    s = str(v)
    if not NAME_RE.match(s):
        raise ValueError("must match [a-z0-9_-]{1,48}")
    return s


def _cpus(v: Any) -> tuple[int, ...] | None:
    """Parse a CPU list like ``0-3,6``."""
    if v is None or str(v).strip() == "":
        return None
    out: list[int] = []
    for part in str(v).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError("must be a CPU list like 0-3,6")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"range {part} is reversed")
        out.extend(range(lo, hi + 1))
    return tuple(dict.fromkeys(out))


def _addr(v: Any) -> str:
    s = str(v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT")
    return s


def _addr_or_off(v: Any) -> str:
    return "off" if str(v).strip().lower() == "off" else _addr(v)


def _optional_path(v: Any) -> str | None:
    return None if v is None or str(v) == "" else str(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v)
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s
    parse.choices = choices  # type: ignore[attr-defined]
    return parse


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = ""
    flag_only: bool = False  # boolean switch: present means true
    commands: tuple[str, ...] = ("run",)

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return "ENGRAM_" + self.name.upper().replace("-", "_")

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


ALL = ("run", "status", "load", "recall", "stop", "top")

SETTINGS: tuple[Setting, ...] = (
    Setting("name", _name, "engram", "Instance name; names its shared memory.", "NAME", commands=ALL),
    Setting("data-dir", str, "./engram-data", "Data directory (lock, write-ahead logs, dead letters).", "DIR",
            commands=("run", "deadletter")),
    Setting("workers", _workers, "auto", "Worker processes: a number, or auto = usable CPUs x workers-per-core.", "N|auto"),
    Setting("workers-per-core", _positive_float, 1.0, "Workers per usable CPU when --workers auto.", "X"),
    Setting("cpus", _cpus, None, "CPUs to pin workers to (default: this process's affinity).", "LIST"),
    Setting("no-pin", _bool, False, "Do not pin workers to CPUs.", flag_only=True),
    Setting("dim", _positive_int, 768, "Vector dimension.", "D"),
    Setting("metric", _choice("cosine", "l2", "ip"), "cosine", "Distance: cosine, l2 (squared) or ip.", "NAME"),
    Setting("hnsw-m", _positive_int, 16, "HNSW M (links per node).", "M"),
    Setting("ef-construction", _positive_int, 200, "HNSW ef at construction.", "EF"),
    Setting("ef-search", _positive_int, 64, "HNSW ef at query time (raised to k when smaller).", "EF"),
    Setting("capacity-high", _positive_int, 10_000, "Engine-wide capacity of the high lane.", "N"),
    Setting("capacity-normal", _positive_int, 100_000, "Engine-wide capacity of the normal lane.", "N"),
    Setting("capacity-low", _positive_int, 50_000, "Engine-wide capacity of the low lane.", "N"),
    Setting("steal-threshold", _non_negative_int, 1000, "Depth above which an idle worker steals from a ring.", "N"),
    Setting("batch-min", _positive_int, 10, "Smallest insert batch.", "N"),
    Setting("batch-max", _positive_int, 1000, "Largest insert batch.", "N"),
    Setting("batch-budget-ms", _positive_float, 50.0, "Time budget of one insert batch (claim, insert, commit).", "MS"),
    Setting("max-spaces", _positive_int, 1024, "Most memory spaces per engine (bounds label cardinality).", "N"),
    Setting("max-batch-size", _positive_int, 10_000, "Most observations in one observe() call.", "N"),
    Setting("max-k", _positive_int, 256, "Largest k a recall may ask for.", "K"),
    Setting("query-slots", _positive_int, 16, "Concurrent recall requests in shared memory.", "N"),
    Setting("query-batch", _positive_int, 16, "Query vectors per recall request slot (larger recalls are chunked).", "N"),
    Setting("shard-initial-capacity", _positive_int, 1024, "Initial HNSW shard capacity (doubles when full).", "N"),
    Setting("worker-timeout", _positive_float, 30.0, "Seconds without heartbeat before a worker is killed as hung.", "S"),
    Setting("graceful-timeout", _positive_float, 30.0, "Seconds to drain queues on SIGTERM before stopping anyway, and again for the workers' final "
            "snapshots.", "S"),
    Setting("restart-backoff-max", _positive_float, 10.0, "Longest delay before restarting a crashed worker.", "S"),
    Setting("flap-restarts", _positive_int, 5, "Crashes within --flap-window that park a worker slot.", "N"),
    Setting("flap-window", _positive_float, 60.0, "Window for counting crashes.", "S"),
    Setting("park-seconds", _positive_float, 60.0, "How long a flapping slot stays parked.", "S"),
    Setting("fsync", _choice("always", "interval", "never"), "interval",
            "Write-ahead log sync: always (every batch), interval (at most ~1 s of inserted data at risk "
            "on power loss), never (left to the kernel).", "POLICY"),
    Setting("snapshot-interval", _non_negative_float, 600.0,
            "Seconds after which a worker snapshots its shards if anything was logged since its last "
            "snapshot (0: no time trigger).", "S"),
    Setting("snapshot-wal-bytes", _non_negative_int, 256 * 2**20,
            "Bytes of write-ahead log not covered by a snapshot after which a worker snapshots its "
            "shards (0: no size trigger). With both triggers 0, only a graceful stop snapshots.", "N"),
    Setting("no-metrics", _bool, False, "Record no metrics (the exporter serves zeros); only for measuring "
            "what recording costs.", flag_only=True),
    Setting("metrics-addr", _addr, "127.0.0.1:9090", "Exporter bind address (Prometheus /metrics, health).", "HOST:PORT"),
    Setting("grpc-addr", _addr_or_off, "127.0.0.1:50051", "Gateway bind address (gRPC), or off for no "
            "gateway.", "HOST:PORT|off"),
    Setting("max-sessions", _positive_int, 256, "Most streaming sessions open at once (gateway).", "N"),
    Setting("session-idle-timeout", _positive_float, 300.0, "Seconds without a message after which a "
            "session expires.", "S"),
    Setting("auth-token-file", _optional_path, None, "File holding the bearer token gRPC callers must "
            "send (default: no authentication).", "FILE"),
    Setting("tls-cert", _optional_path, None, "PEM certificate chain for gRPC over TLS (with --tls-key).",
            "FILE"),
    Setting("tls-key", _optional_path, None, "PEM private key for gRPC over TLS (with --tls-cert).", "FILE"),
    Setting("grpc-max-message-bytes", _positive_int, 64 << 20, "Largest gRPC message the gateway "
            "accepts or sends.", "BYTES"),
    Setting("log-level", _choice("debug", "info", "warning", "error"), "info", "Log level.", "LEVEL"),
    Setting("log-format", _choice("text", "json"), "text", "Log lines on stderr: text for people, json (one "
            "object per line: time, level, role, slot, pid, message, exception) for log shippers.", "FORMAT"),
)

BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, attr: str) -> Any:
        try:
            return self.values[attr]
        except KeyError:
            raise AttributeError(attr) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


def _parse(setting: Setting, raw: Any, source: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{setting.flag}={raw!r} ({source}): {exc}") from None


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of one subcommand; defaults stay None so sources can merge."""
    for s in SETTINGS:
        if command not in s.commands:
            continue
        if s.flag_only:
            parser.add_argument(s.flag, dest=s.attr, action="store_const", const=True, default=None,
                                help=f"{s.help} [env {s.env}]")
        else:
            parser.add_argument(s.flag, dest=s.attr, default=None, metavar=s.metavar or None,
                                help=f"{s.help} (default: {_show(s.default)}) [env {s.env}]")
    parser.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                        help="TOML file with settings (keys as the flag names).")


def _show(v: Any) -> str:
    if v is None:
        return "unset"
    return str(v)


def resolve(args: argparse.Namespace | None, command: str, env: dict[str, str] | None = None,
            toml_path: str | None = None) -> Config:
    """Merge default < TOML < environment < command line, validating each value."""
    env = os.environ if env is None else env
    toml_path = toml_path or (getattr(args, "config_file", None) if args else None)
    toml: dict[str, Any] = {}
    if toml_path:
        try:
            with open(toml_path, "rb") as fh:
                toml = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"--config={toml_path!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config={toml_path!r}: {exc}") from None
        unknown = [k for k in toml if k.replace("_", "-") not in BY_NAME]
        if unknown:
            raise ConfigError(f"--config={toml_path!r}: unknown setting(s) {', '.join(sorted(unknown))}")
        toml = {k.replace("_", "-"): v for k, v in toml.items()}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if command not in s.commands:
            continue
        cli = getattr(args, s.attr, None) if args is not None else None
        if cli is not None:
            values[s.attr] = _parse(s, cli, "command line")
        elif s.env in env:
            values[s.attr] = _parse(s, env[s.env], f"environment {s.env}")
        elif s.name in toml:
            values[s.attr] = _parse(s, toml[s.name], f"config file {toml_path}")
        else:
            values[s.attr] = s.default if s.default is None else _parse(s, s.default, "default")
    _cross_check(values)
    return Config(values)


def _cross_check(v: dict[str, Any]) -> None:
    if "tls_cert" in v and (v["tls_cert"] is None) != (v["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if "batch_min" in v and v["batch_min"] > v["batch_max"]:
        raise ConfigError(f"--batch-min={v['batch_min']} is larger than --batch-max={v['batch_max']}")


def render_markdown() -> str:
    rows = ["| flag | environment | default | commands | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        cmds = "all" if s.commands == ALL else ", ".join(s.commands)
        rows.append(f"| `{s.flag}` | `{s.env}` | `{_show(s.default)}` | {cmds} | {s.help} |")
    return "\n".join(rows)


def _mix(v: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in str(v).split(","):
        name, sep, weight = part.partition(":")
        name = name.strip()
        if not sep or name not in ("high", "normal", "low"):
            raise ValueError("must look like high:0.1,normal:0.7,low:0.2")
        out[name] = float(weight)
        if out[name] < 0:
            raise ValueError(f"weight of {name} is negative")
    if sum(out.values()) <= 0:
        raise ValueError("weights add up to zero")
    return out


def _optional_positive_int(v: Any) -> int | None:
    return None if v is None or str(v) == "" else _positive_int(v)


def _optional_floats(v: Any) -> tuple[float, ...] | None:
    if v is None or str(v).strip() == "":
        return None
    return tuple(float(x) for x in str(v).split(","))


SETTINGS = SETTINGS + (
    Setting("rate", _positive_float, 5000.0, "Target observations per second.", "N", commands=("load",)),
    Setting("duration", _positive_float, 20.0, "Seconds of load.", "S", commands=("load",)),
    Setting("spaces", _positive_int, 3, "Memory spaces to load: default, space-1, space-2, ...", "N",
            commands=("load",)),
    Setting("priority-mix", _mix, "high:0.1,normal:0.7,low:0.2", "Share of each priority.", "MIX",
            commands=("load",)),
    Setting("load-batch", _positive_int, 100, "Observations per observe() call.", "N", commands=("load",)),
    Setting("space", str, "default", "Memory space to query.", "SPACE", commands=("recall",)),
    Setting("k", _positive_int, 10, "Neighbours to return.", "K", commands=("recall",)),
    Setting("random", _bool, False, "Query with a random vector.", flag_only=True, commands=("recall",)),
    Setting("vector", _optional_floats, None, "Query vector as comma-separated floats.", "X,Y,...",
            commands=("recall",)),
    Setting("fresh", _bool, False, "Also scan observations still queued.", flag_only=True,
            commands=("recall",)),
    Setting("ef", _optional_positive_int, None, "HNSW ef for this query (default --ef-search).", "EF",
            commands=("recall",)),
    Setting("json", _bool, False, "Print JSON.", flag_only=True, commands=("status", "recall", "deadletter")),
    Setting("interval", _positive_float, 1.0, "Seconds between the two metric samples behind rates "
            "(top: between refreshes).", "S", commands=("status", "top")),
    Setting("count", _non_negative_int, 0, "Frames to show before exiting (0: until q is pressed; 1 when "
            "the output is not a terminal).", "N", commands=("top",)),
    Setting("timeout", _positive_float, 120.0, "Seconds to wait for the instance to stop.", "S",
            commands=("stop",)),
)
BY_NAME = {s.name: s for s in SETTINGS}
