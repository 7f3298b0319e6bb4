"""Every process of a real engine names itself, and ``status`` shows the same names."""

from __future__ import annotations

import json
import subprocess
import sys

from engine import identity
from tests.harness import wait_for

from tests.harness import ROOT


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().rstrip(b"\0").replace(b"\0", b" ").decode()


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_titles_are_spelled_in_one_place():
    assert identity.title("supervisor", "prod") == "engram: supervisor [prod]"
    assert identity.title("worker", "prod", 3, 3) == "engram: worker 3 cpu 3 [prod]"
    assert identity.title("worker", "prod", 0, -1) == "engram: worker 0 [prod]"  # unpinned
    assert identity.title("gateway", "prod", port=50051) == "engram: gateway :50051 [prod]"
    assert identity.title("exporter", "prod", port=9090) == "engram: exporter :9090 [prod]"


def test_proc_cmdline_of_every_process_matches_status(engine_factory):
    ep = engine_factory()
    name = ep.name

    def settled():
        st = json.loads(cli("status", "--name", name, "--json"))
        procs = [(st["pid"], st["title"])] + [(w["pid"], w["title"]) for w in st["workers"]] + \
                [(st[k]["pid"], st[k]["title"]) for k in ("exporter", "gateway")]
        # the exporter and the gateway add their port once bound
        return st if all(pid and cmdline(pid) == text for pid, text in procs) else None

    st = wait_for(settled, 30, message="every process titled as status says")
    assert cmdline(st["pid"]) == f"engram: supervisor [{name}]"
    cpus = [w["cpus"][0] for w in st["workers"]]
    assert [cmdline(w["pid"]) for w in st["workers"]] == \
        [f"engram: worker {i} cpu {c} [{name}]" for i, c in enumerate(cpus)]
    assert cmdline(st["gateway"]["pid"]) == f"engram: gateway :{st['gateway']['port']} [{name}]"
    assert cmdline(st["exporter"]["pid"]) == f"engram: exporter :{st['metrics_port']} [{name}]"
    text = cli("status", "--name", name)
    for pid in (st["pid"], st["gateway"]["pid"], st["exporter"]["pid"], *(w["pid"] for w in st["workers"])):
        assert f"{pid:>8}  {cmdline(pid)}" in text, text
