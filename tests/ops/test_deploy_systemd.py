"""deploy/systemd/engram-stream.service passes systemd-analyze verify and fits the engine."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from engine.config import BY_NAME

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "engram-stream.service"


def verify(text: str, tmp_path: Path) -> str:
    """systemd-analyze's complaints (it exits 0 on many of them, so its output is the verdict)."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: scripts/test installs Debian's systemd"
    path = tmp_path / UNIT.name
    # ExecStart must name an executable that exists here; everything else is checked as written.
    path.write_text(text.replace("/usr/local/bin/engram-stream", sys.executable))
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    return (out.stdout + out.stderr).strip() + ("" if out.returncode == 0 else f"\nexit {out.returncode}")


def test_unit_verifies_clean_and_a_broken_one_does_not(tmp_path):
    text = UNIT.read_text()
    assert verify(text, tmp_path) == ""
    assert "kill mode" in verify(text.replace("KillMode=mixed", "KillMode=bogus"), tmp_path)


def test_unit_stops_gracefully_within_its_timeout():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(UNIT.read_text())
    svc = unit["Service"]
    assert svc["Type"] == "simple" and svc["KillMode"] == "mixed" and svc["KillSignal"] == "SIGTERM"
    # drain + final snapshots may each take --graceful-timeout
    assert int(svc["TimeoutStopSec"]) > 2 * BY_NAME["graceful-timeout"].default
    assert int(svc["LimitNOFILE"]) >= 65536
    assert svc["User"] != "root" and svc["NoNewPrivileges"] == "yes"
    assert "run --config" in svc["ExecStart"]
