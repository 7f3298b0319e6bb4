"""Helpers of the deployment tests: the /dev/shm figure through scripts/shm_size.py,
and the size and duration notations of Docker, compose and Kubernetes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHM_SIZE = ROOT / "scripts" / "shm_size.py"
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage: what every container of the image starts with."""
    from dockerfile_parse import DockerfileParser
    return DockerfileParser(path=str(DOCKERFILE)).envs


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without ENGRAM_* variables (they would change the figure), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_")}
    env.update(extra)
    return env


def shm_size(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SHM_SIZE), *args], capture_output=True, text=True,
                          env=clean_env(**(env or {})), timeout=60)


def shm_figure(*args: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(bytes needed, suggested bytes) for a configuration, as the script prints them."""
    exact, suggest = shm_size(*args, env=env), shm_size(*args, "--suggest", env=env)
    assert exact.returncode == 0 and suggest.returncode == 0, exact.stderr + suggest.stderr
    return int(exact.stdout), k8s_bytes(suggest.stdout.strip())


_DOCKER_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def docker_bytes(value: str | int) -> int:
    """Docker's byte notation (``--shm-size``, compose ``shm_size``): binary units."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"([0-9]+)\s*([a-z]*)", value.strip().lower())
    assert m and m.group(2) in _DOCKER_UNITS, f"not a Docker size: {value!r}"
    return int(m.group(1)) * _DOCKER_UNITS[m.group(2)]


_K8S_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
              "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def k8s_bytes(value: str | int) -> int:
    """A Kubernetes quantity of bytes (``sizeLimit``, memory)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"([0-9]+)([A-Za-z]*)", value.strip())
    assert m and m.group(2) in _K8S_UNITS, f"not a Kubernetes byte quantity: {value!r}"
    return int(m.group(1)) * _K8S_UNITS[m.group(2)]


def duration_seconds(value: str | int | float) -> float:
    """A Go-style duration as compose writes them (``90s``, ``1m30s``)."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"([0-9.]+)(h|ms|m|s|us)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)
