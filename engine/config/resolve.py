"""Merging a command's settings from their sources, and their documentation table.

Precedence: command line > environment (``ENGRAM_<NAME>``) > TOML file
(``--config``) > default. Every value goes through its setting's parser;
errors name the flag, the value and where it came from.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from engine.config.settings import ALL, BY_NAME, SETTINGS, Setting
from engine.errors import ConfigError, shown


@dataclass(frozen=True)
class Config:
    values: dict[str, Any] = field(default_factory=dict)
    # Attributes whose value an operator gave (flag, environment or file),
    # not defaulted: the auto-tuner leaves those settings pinned.
    explicit: frozenset[str] = frozenset()

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
        raise ConfigError(f"{setting.flag}={shown(raw)} ({source}): {exc}") from None


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
    explicit: set[str] = set()
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
            continue
        explicit.add(s.attr)
    _cross_check(values)
    return Config(values, frozenset(explicit))


def _cross_check(v: dict[str, Any]) -> None:
    _cluster_check(v)
    if "tls_cert" in v and (v["tls_cert"] is None) != (v["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if "batch_min" in v and v["batch_min"] > v["batch_max"]:
        raise ConfigError(f"--batch-min={v['batch_min']} is larger than --batch-max={v['batch_max']}")


def _cluster_check(v: dict[str, Any]) -> None:
    """Cluster mode needs its servers and, to run a host, an id and a reachable address."""
    if v.get("cluster") is None:
        return
    if v.get("nats") is None:
        raise ConfigError(f"--cluster={v['cluster']} needs --nats URL[,URL...] (the cluster's NATS servers)")
    if "host_id" not in v:
        return  # `cluster status|drain`
    if v["host_id"] is None:
        raise ConfigError(f"--cluster={v['cluster']} needs --host-id ID (this host's id in the cluster)")
    if v["grpc_addr"] == "off":
        raise ConfigError("--grpc-addr=off: a cluster host serves gRPC (other hosts forward recalls to it)")
    if v["advertise"] is None:
        if v["grpc_addr"].rpartition(":")[2] == "0":
            raise ConfigError(f"--advertise is needed when --grpc-addr={v['grpc_addr']} picks a random port: "
                              f"other hosts must know where to reach this one")
        v["advertise"] = v["grpc_addr"]


def render_markdown() -> str:
    rows = ["| flag | environment | default | commands | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        cmds = "all" if s.commands == ALL else ", ".join(s.commands)
        rows.append(f"| `{s.flag}` | `{s.env}` | `{_show(s.default)}` | {cmds} | {s.help} |")
    return "\n".join(rows)
