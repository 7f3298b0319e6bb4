"""deploy/systemd/cluster: the three-host example (NATS config, drop-ins) verifies and works.

The NATS file is started as shipped, three times on loopback (only host
names, ports and the store directory replaced), and must form a JetStream
cluster that takes a 3-replica stream; an engine configured by nothing but
the drop-in's ENGRAM_* environment (NATS URLs and the host id replaced)
must join it as a host.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from engine.config import BY_NAME

from tests.cluster_helpers import NatsCluster, run_cli
from tests.harness import EngineProcess, free_port, wait_for

HERE = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
CLUSTER = HERE / "cluster"
NATS_CONF = CLUSTER / "nats-server.conf"
ENGINE_DROPIN = CLUSTER / "engram-stream.service.d" / "cluster.conf"
NATS_DROPIN = CLUSTER / "nats-server.service.d" / "engram.conf"
HOSTS = ("a", "b", "c")


def unit(path: Path) -> configparser.ConfigParser:
    u = configparser.ConfigParser(strict=False, interpolation=None)
    u.optionxform = str
    u.read_string(path.read_text())
    return u


def environment(path: Path) -> dict[str, str]:
    """The Environment= lines of a unit file (configparser keeps the last of repeated keys)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].partition("=")
            out[key] = value
    return out


def verify_with_dropin(tmp_path: Path) -> str:
    """``systemd-analyze verify`` of engram-stream.service with the cluster drop-in beside it."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: scripts/test installs Debian's systemd"
    units = tmp_path / "units"
    (units / "engram-stream.service.d").mkdir(parents=True)
    text = (HERE / "engram-stream.service").read_text().replace("/usr/local/bin/engram-stream", sys.executable)
    (units / "engram-stream.service").write_text(text)
    shutil.copy(ENGINE_DROPIN, units / "engram-stream.service.d" / "cluster.conf")
    # nats-server.service as Debian ships it (After=/Wants= name it)
    (units / "nats-server.service").write_text(
        f"[Service]\nType=simple\nExecStart={shutil.which('nats-server')} -c /etc/nats-server.conf\n")
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{units}:")
    out = subprocess.run(["systemd-analyze", "verify", "engram-stream.service"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=units)
    return (out.stdout + out.stderr).strip() + ("" if out.returncode == 0 else f"\nexit {out.returncode}")


def test_engine_dropin_verifies_with_the_unit_and_names_only_real_settings(tmp_path):
    assert verify_with_dropin(tmp_path) == ""
    env = environment(ENGINE_DROPIN)
    by_env = {s.env: s for s in BY_NAME.values()}
    unknown = [k for k in env if k not in by_env]
    assert not unknown, f"not engine settings: {unknown}"
    assert {"ENGRAM_CLUSTER", "ENGRAM_NATS", "ENGRAM_HOST_ID", "ENGRAM_ADVERTISE"} <= set(env)
    assert env["ENGRAM_NATS"] == ",".join(f"nats://{h}:4222" for h in HOSTS)
    assert env["ENGRAM_ADVERTISE"].endswith(env["ENGRAM_GRPC_ADDR"].rsplit(":", 1)[1])
    assert "nats-server.service" in unit(ENGINE_DROPIN)["Unit"]["After"]


def test_nats_dropin_names_each_server_after_its_host():
    svc = unit(NATS_DROPIN)["Service"]
    assert environment(NATS_DROPIN)["NATS_NAME"] == "%H"
    assert svc["StateDirectory"] == "nats"
    assert "store_dir: /var/lib/nats" in NATS_CONF.read_text()  # what StateDirectory creates


def conf_test(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "nats.conf"
    path.write_text(text)
    return subprocess.run([shutil.which("nats-server"), "-t", "-c", str(path)], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, NATS_NAME="a"))


def test_nats_config_passes_the_servers_own_check_and_a_broken_one_does_not(tmp_path):
    text = NATS_CONF.read_text()
    assert conf_test(text, tmp_path).returncode == 0
    assert conf_test(text.replace("jetstream {", "jetstream {{"), tmp_path).returncode != 0
    routes = re.findall(r"nats-route://(\w+):6222", text)
    assert tuple(routes) == HOSTS


class ShippedNats(NatsCluster):
    """Three servers from the shipped file, on loopback."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, 3)
        self.confs = []
        text = NATS_CONF.read_text()
        for i in range(3):
            t = text.replace("0.0.0.0:4222", f"127.0.0.1:{self.ports[i]}")
            t = t.replace("0.0.0.0:6222", f"127.0.0.1:{self.route_ports[i]}")
            t = t.replace("127.0.0.1:8222", f"127.0.0.1:{free_port()}")
            t = t.replace("/var/lib/nats", self.dirs[i])
            for host, port in zip(HOSTS, self.route_ports):
                t = t.replace(f"nats-route://{host}:6222", f"nats-route://127.0.0.1:{port}")
            path = tmp_path / f"nats-{i}.conf"
            path.write_text(t)
            self.confs.append(str(path))

    def args(self, i: int) -> list[str]:
        # the drop-in's Environment=NATS_NAME=%H, with host names a, b, c
        return ["env", f"NATS_NAME={HOSTS[i]}", self.binary, "-c", self.confs[i]]


def test_shipped_files_make_a_three_server_jetstream_and_an_engine_joins_it(tmp_path, monkeypatch):
    nats = ShippedNats(tmp_path)
    host = None
    try:
        nats.start()  # waits until a stream with a replica on each server can be placed
        port = free_port()
        env = environment(ENGINE_DROPIN)
        env["ENGRAM_NATS"] = nats.urls
        env["ENGRAM_HOST_ID"] = "a"
        env["ENGRAM_ADVERTISE"] = f"127.0.0.1:{port}"
        env["ENGRAM_GRPC_ADDR"] = f"127.0.0.1:{port}"
        env["ENGRAM_PARTITIONS"] = "8"  # the shipped 64 works too; fewer keep the test short
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        host = EngineProcess(tmp_path, workers="1", no_pin="")
        host.start()  # after the assignment: a start that fails is cleaned up below too

        def joined():
            out = run_cli("cluster", "status", "--json", "--cluster", env["ENGRAM_CLUSTER"], "--nats", nats.urls)
            if out.returncode != 0:
                return None
            st = json.loads(out.stdout)
            hosts = {h["id"]: h for h in st["hosts"]}
            return st if "a" in hosts and hosts["a"]["live"] and len(st["partitions"]) == 8 else None
        st = wait_for(joined, 60, 0.5, "the engine of the drop-in listed as a live host")
        assert st["meta"]["log_replicas"] == 3 and st["meta"]["partitions"] == 8
        assert {p["owner"] for p in st["partitions"]} == {"a"}
    finally:
        if host is not None:
            host.terminate(30)
            host.cleanup()
        nats.stop()
