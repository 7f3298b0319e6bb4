"""deploy/container: the Dockerfile, compose.yaml and its Prometheus configuration.

No container engine runs here, so nothing is built or started. What is checked:
the Dockerfile parsed (dockerfile-parse) with its required instructions
asserted and its HEALTHCHECK command run against a real exporter; compose.yaml
validated by Debian's docker-compose (``config``, which needs no daemon) and
its values checked against the engine's own figures (``scripts/shm_size.py``,
--graceful-timeout); prometheus.yml checked by ``promtool check config`` with
the files laid out as compose mounts them.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from prometheus_client.registry import CollectorRegistry

from tests.deploy_helpers import DOCKERFILE, ROOT, docker_bytes, duration_seconds, image_env, shm_figure
from engine.config import SETTINGS, resolve
from metrics.exporter import MetricsServer

HERE = ROOT / "deploy" / "container"
COMPOSE = HERE / "compose.yaml"
SETTING_ENVS = {s.env for s in SETTINGS}
COMPILERS = ("build-essential", "gcc", "g++", "clang", "cc ")


# -- Dockerfile -----------------------------------------------------------------
def stages() -> list[list[dict]]:
    """The Dockerfile's instructions (comments dropped), one list per FROM."""
    out: list[list[dict]] = []
    for ins in DockerfileParser(path=str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def healthcheck_argv() -> list[str]:
    [hc] = values(stages()[-1], "HEALTHCHECK")
    options, sep, cmd = hc.partition(" CMD ")
    assert sep, f"HEALTHCHECK without CMD: {hc!r}"
    return json.loads(cmd)  # exec form: no shell needed in the image


def test_build_stage_compiles_and_the_runtime_stage_has_no_compiler():
    build, *_, final = stages()
    assert len(stages()) >= 2
    assert " AS build" in build[0]["value"]
    build_runs = " ".join(values(build, "RUN"))
    assert "build-essential" in build_runs and "pip wheel" in build_runs
    # a portable hnswlib: no -march=native (SIGILL on hosts older than the builder)
    assert "HNSWLIB_NO_NATIVE=1" in values(build, "ARG") + values(build, "ENV")
    final_runs = " ".join(values(final, "RUN"))
    assert not [c for c in COMPILERS if c in final_runs], final_runs
    assert "--no-index" in final_runs, "the runtime stage installs only the wheels built before"
    assert any(v.startswith("--from=build ") for v in values(final, "COPY"))


def test_build_stage_copies_what_setup_cfg_packages():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    copied = set()
    for value in values(stages()[0], "COPY"):
        copied.update(p.rstrip("/") for p in shlex.split(value)[:-1])
    for pkg in cfg["options.packages.find"]["include"].split():
        if not pkg.endswith(".*"):
            assert pkg in copied, pkg
    assert cfg["metadata"]["long_description"].removeprefix("file:").strip() in copied
    assert {"setup.cfg", "pyproject.toml"} <= copied
    for path in copied:
        assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not copied & set(ignored)


def test_runtime_stage_runs_the_engine_as_a_non_root_user():
    final = stages()[-1]
    assert values(final, "USER") and values(final, "USER")[-1] not in ("root", "0", "0:0")
    [entry] = values(final, "ENTRYPOINT")
    argv = json.loads(entry)
    assert argv[0] == "tini" and argv[-1] == "engram-stream"  # tini forwards SIGTERM, reaps orphans
    assert "engram-stream = engine.cli.main:entry" in (ROOT / "setup.cfg").read_text()
    assert json.loads(values(final, "CMD")[-1]) == ["run"]
    assert values(final, "STOPSIGNAL") == ["SIGTERM"]


def test_runtime_listens_on_all_interfaces_on_the_exposed_ports_and_keeps_data_in_the_volume():
    envs, final = image_env(), stages()[-1]
    exposed = {int(p) for v in values(final, "EXPOSE") for p in v.split()}
    assert envs["ENGRAM_METRICS_ADDR"].rpartition(":")[0] == "0.0.0.0"
    assert envs["ENGRAM_GRPC_ADDR"].rpartition(":")[0] == "0.0.0.0"
    assert exposed == {int(envs["ENGRAM_METRICS_ADDR"].rpartition(":")[2]),
                       int(envs["ENGRAM_GRPC_ADDR"].rpartition(":")[2])} == {9090, 50051}
    # every ENGRAM_ variable is a setting, and each parses
    engram = {k: v for k, v in envs.items() if k.startswith("ENGRAM_")}
    assert set(engram) <= SETTING_ENVS
    resolve(None, "run", env=engram)
    [volume] = values(final, "VOLUME")
    [vol] = json.loads(volume)
    assert envs["ENGRAM_DATA_DIR"].startswith(vol.rstrip("/") + "/")


@pytest.fixture
def exporter():
    state = {"live": True, "ready": True, "reason": ""}
    server = MetricsServer("127.0.0.1:0", CollectorRegistry(), lambda: dict(state)).start()
    try:
        yield server, state
    finally:
        server.shutdown()


def run_healthcheck(argv: list[str], port: int) -> int:
    assert argv[0] == "python"
    env = {"ENGRAM_METRICS_ADDR": f"0.0.0.0:{port}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_passes_while_live_and_fails_otherwise(exporter):
    server, state = exporter
    argv = healthcheck_argv()
    assert run_healthcheck(argv, server.port) == 0
    state["live"] = False
    assert run_healthcheck(argv, server.port) != 0
    server.shutdown()
    assert run_healthcheck(argv, server.port) != 0


# -- compose ------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def docker_compose(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: scripts/test installs Debian's docker-compose"
    # relative paths resolve against deploy/container, wherever the file is
    return subprocess.run([exe, "-f", str(path), "--project-directory", str(HERE), "--profile", "grafana",
                           "config", "-q"], capture_output=True, text=True, timeout=120, cwd=HERE)


def test_compose_file_is_valid_and_a_broken_one_is_not(tmp_path):
    out = docker_compose(COMPOSE)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    shm_size:", "    shm_sise:"))
    out = docker_compose(broken)
    assert out.returncode != 0 and "shm_sise" in out.stdout + out.stderr


def engine_service() -> dict:
    svc = compose()["services"]["engram"]
    assert (ROOT / "deploy/container" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() \
        == DOCKERFILE
    return svc


def engine_env(svc: dict) -> dict[str, str]:
    """What the engine sees: the image's ENGRAM_ variables, then compose's over them."""
    env = {k: v for k, v in image_env().items() if k.startswith("ENGRAM_")}
    env.update({k: str(v) for k, v in svc["environment"].items()})
    assert set(env) <= SETTING_ENVS, set(env) - SETTING_ENVS
    return env


def test_compose_shm_size_fits_the_configuration_it_passes():
    svc = engine_service()
    env = engine_env(svc)
    assert env.get("ENGRAM_WORKERS", "auto") != "auto", "the figure depends on the worker count"
    need, suggested = shm_figure(env=env)
    assert docker_bytes(svc["shm_size"]) >= suggested > need


def test_compose_stops_gracefully_and_checks_health():
    svc = engine_service()
    graceful = resolve(None, "run", env=engine_env(svc)).graceful_timeout
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    # drain, then the workers' final snapshots, may each take --graceful-timeout
    assert duration_seconds(svc["stop_grace_period"]) > 2 * graceful
    assert svc["healthcheck"]["test"][0] == "CMD"
    assert svc["healthcheck"]["test"][1:] == healthcheck_argv()
    for port in svc["ports"]:
        assert port.startswith("127.0.0.1:"), port  # loopback, like the engine's defaults
    [vol] = json.loads(values(stages()[-1], "VOLUME")[0])
    assert any(v.split(":")[1] == vol for v in svc["volumes"])


def mounted(service: str, root: Path) -> None:
    """Copy the service's bind-mounted files under ``root`` at their paths in the container."""
    for spec in compose()["services"][service]["volumes"]:
        source, target = spec.split(":")[:2]
        if not source.startswith("."):
            continue  # a named volume
        src = (HERE / source).resolve()
        assert src.is_file(), f"{service} mounts {source}, which does not exist"
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)


def test_compose_prometheus_config_passes_promtool_as_mounted(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: scripts/test installs Debian's prometheus package"
    mounted("prometheus", tmp_path)
    config = tmp_path / "etc/prometheus/prometheus.yml"
    out = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 2 rule files found" in out.stdout + out.stderr


def test_compose_prometheus_scrapes_the_engine_under_the_alerts_job_name():
    prom = yaml.safe_load((HERE / "prometheus.yml").read_text())
    example = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    [job] = prom["scrape_configs"]
    [example_job] = example["scrape_configs"]
    assert job["job_name"] == example_job["job_name"] == "engram-streaming"
    assert 'up{job="engram-streaming"}' in (ROOT / "prometheus/alerts.yml").read_text()
    port = engine_env(engine_service())["ENGRAM_METRICS_ADDR"].rpartition(":")[2]
    assert job["static_configs"][0]["targets"] == [f"engram:{port}"]
    assert job["scrape_timeout"] == example_job["scrape_timeout"]


def test_compose_grafana_is_optional_and_provisions_the_dashboard(tmp_path):
    svc = compose()["services"]["grafana"]
    assert svc["profiles"] == ["grafana"]
    mounted("grafana", tmp_path)
    provider = yaml.safe_load((HERE / "grafana/dashboards.yml").read_text())["providers"][0]
    folder = tmp_path / provider["options"]["path"].lstrip("/")
    [dashboard] = folder.glob("*.json")
    assert json.loads(dashboard.read_text())["uid"] == json.loads((ROOT / "grafana/streaming.json").read_text())["uid"]
    [source] = yaml.safe_load((HERE / "grafana/datasources.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]

