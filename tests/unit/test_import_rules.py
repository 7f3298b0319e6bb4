"""Who may import whom (DESIGN §1), checked on the source with ``ast``.

Every module of engine/, shm/ and metrics/ is parsed; every ``import`` and
``from ... import`` in it (top level and inside functions) is resolved to the
module of ours it loads, and checked against ``RULES``: the importing
module's most specific package prefix names the prefixes it may import.
Each violation is reported as ``file:line: importer imports target``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ROOT, child_env

OURS = ("engine", "shm", "metrics")

# Modules of the engine that are no process's own: any process package may use them.
SHARED = ("shm", "metrics", "engine.control", "engine.config", "engine.errors", "engine.results",
          "engine.child", "engine.rpc", "engine.identity", "engine.signals", "engine.fsutil", "engine.exitcodes",
          "engine.logfmt", "engine.distances", "engine.recallhealth", "engine.ledger")
PROCESSES = ("engine.supervisor", "engine.worker", "engine.storage", "engine.producer",
             "engine.gateway", "engine.exporter", "engine.prober", "engine.cluster", "engine.cli")

# importer prefix -> prefixes it may import (its own package is always allowed).
RULES: dict[str, tuple[str, ...]] = {
    "shm": (),
    "metrics": ("shm",),
    # (engine.identity: the status report names each process as ps shows it)
    "engine.control": ("shm", "metrics", "engine.config", "engine.errors", "engine.results", "engine.identity"),
    "engine.client": ("engine.rpc", "engine.results", "engine.errors"),
    # What the client and every process lean on stays light: no shared memory.
    "engine.rpc": ("engine.results", "engine.errors"),
    "engine.config": ("engine.errors",),
    "engine.errors": (),
    "engine.results": (),
    "engine.child": (),
    # Leaf modules every process uses: no shared memory, nothing of a process.
    "engine.identity": (),
    "engine.signals": (),
    "engine.fsutil": (),
    "engine.exitcodes": (),
    "engine.logfmt": ("engine.identity",),
    "engine.distances": (),
    # Recall health (breakers, probes, tuner): policy over the control block, used by several processes.
    "engine.recallhealth": ("shm", "metrics", "engine.control", "engine.config", "engine.errors",
                            "engine.results", "engine.distances"),
    # Forget and upsert: the identity table's rule, stamps and compaction, used
    # by producers, workers, storage and the supervisor alike.
    "engine.ledger": ("shm", "metrics", "engine.control", "engine.config", "engine.errors", "engine.results",
                      "engine.fsutil"),
    "engine.prober": SHARED,
    # Cluster mode: its front runs as the gateway process (the gateway's service,
    # publishing to the log) and its follower applies through the producer path.
    "engine.cluster": SHARED + ("engine.producer", "engine.gateway"),
    # The children's entry points and the storage checks come from the CLI
    # (engine.cli.entries): the supervisor names no other process package.
    "engine.supervisor": SHARED,
    "engine.worker": SHARED + ("engine.storage",),
    "engine.storage": SHARED,
    "engine.producer": SHARED,
    "engine.gateway": SHARED + ("engine.producer",),
    "engine.exporter": SHARED,
    "engine.cli": SHARED + PROCESSES,  # the entry point: may start or use any of them
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    target: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_for(module: str, rules: dict) -> str | None:
    """The most specific prefix in ``rules`` that ``module`` lies within."""
    matches = [p for p in rules if within(module, p)]
    return max(matches, key=len) if matches else None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool, exists) -> list[tuple[int, str]]:
    """(line, module) for every import in ``tree``, ``from a import b`` resolved
    to ``a.b`` when that is a module (``exists``), else to ``a``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package upwards
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if exists(sub) else base))
    return out


def check_source(source: str, module: str, path: str = "<source>", is_package: bool = False,
                 exists=lambda name: False, rules: dict = RULES) -> list[Violation]:
    """Violations of ``rules`` by one module's source."""
    rule = rule_for(module, rules)
    if rule is None:
        return []
    allowed = (rule,) + rules[rule]
    found = []
    for line, target in imported(ast.parse(source, path), module, is_package, exists):
        if not any(within(target, p) for p in OURS):
            continue  # stdlib or third party
        if not any(within(target, p) for p in allowed):
            found.append(Violation(path, line, module, target))
    return found


def check_tree(root: Path, rules: dict = RULES) -> list[Violation]:
    """Violations by every module of our packages under ``root``."""
    files = sorted(f for pkg in OURS for f in (root / pkg).rglob("*.py"))
    names = {module_name(f, root) for f in files}
    found = []
    for f in files:
        found += check_source(f.read_text(), module_name(f, root), str(f.relative_to(root)),
                              f.name == "__init__.py", names.__contains__, rules)
    return found


# -- the rules hold ------------------------------------------------------------------
def test_every_module_keeps_the_import_rules():
    found = check_tree(Path(ROOT))
    assert not found, "import rules broken (DESIGN §1):\n" + "\n".join(map(str, found))


def test_every_package_of_ours_has_a_rule():
    """A new process package must be given a rule, not slip through unchecked."""
    root = Path(ROOT)
    packages = {module_name(p.parent, root) for pkg in OURS for p in (root / pkg).rglob("__init__.py")}
    unruled = sorted(p for p in packages if p != "engine" and rule_for(p, RULES) is None
                     and not any(within(p, s) for s in SHARED))
    assert not unruled, f"packages without an import rule: {unruled}"


def test_the_remote_client_loads_no_shared_memory_code():
    out = subprocess.run([sys.executable, "-c", "import engine.client, sys; print('posix_ipc' in sys.modules)"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "importing engine.client loaded posix_ipc"


# -- the checker itself catches what it should -------------------------------------------
FORBIDDEN = [
    ("shm.ring", "from metrics import catalog\n", "metrics.catalog"),
    ("metrics.writer", "import engine.errors\n", "engine.errors"),
    ("engine.control.pressure", "from engine.producer.api import Engine\n", "engine.producer.api"),
    ("engine.client", "from engine.control.instance import Instance\n", "engine.control.instance"),
    ("engine.producer.api", "def status():\n    from engine.cli.status import collect\n", "engine.cli.status"),
    ("engine.worker.loop", "from engine.gateway import server\n", "engine.gateway.server"),
    ("engine.exporter.server", "from engine.supervisor.arbiter import Supervisor\n", "engine.supervisor.arbiter"),
    ("engine.supervisor.arbiter", "from engine.worker.shards import ShardSet\n", "engine.worker.shards"),
    ("engine.supervisor.arbiter", "def spawn():\n    from engine.worker.loop import main\n", "engine.worker.loop"),
    ("engine.storage.wal", "from ..producer import api\n", "engine.producer.api"),
]


@pytest.mark.parametrize("module, source, target", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_checker_reports_a_forbidden_import(module, source, target):
    exists = {"engine.gateway.server", "engine.producer.api", "metrics.catalog"}.__contains__
    found = check_source(source, module, "synthetic.py", exists=exists)
    assert [(v.line, v.target) for v in found] == [(source.count("\n"), target)], found
    assert str(found[0]).startswith("synthetic.py:")


ALLOWED = [
    ("engine.worker.loop", "from engine.storage.slotstore import SlotStore\n"),
    ("engine.gateway.server", "from engine.producer.api import Engine\n"),
    ("engine.cli.main", "from engine.supervisor.arbiter import Supervisor\n"),
    ("engine.cli.entries", "def resolve():\n    from engine.worker import loop\n"),
    ("engine.control.report", "import numpy as np\nfrom metrics import readout\nfrom engine.errors import NotRunning\n"),
    ("engine.client", "from engine.rpc import wire\nfrom engine.results import Ack\n"),
]


@pytest.mark.parametrize("module, source", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_checker_accepts_an_allowed_import(module, source):
    assert check_source(source, module, exists={"engine.worker.loop"}.__contains__) == []


def test_a_forbidden_import_in_a_copy_of_the_tree_fails_the_check(tmp_path):
    """The whole-tree check, on a copy with one import added that breaks a rule."""
    for pkg in OURS:
        for f in (Path(ROOT) / pkg).rglob("*.py"):
            dst = tmp_path / f.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(f.read_text())
    assert check_tree(tmp_path) == []
    victim = tmp_path / "shm" / "ring.py"
    victim.write_text(victim.read_text() + textwrap.dedent("""
        def _late():
            from engine.control import layouts
            return layouts
    """))
    found = check_tree(tmp_path)
    assert [str(v) for v in found] == [
        f"shm/ring.py:{victim.read_text().count(chr(10)) - 1}: shm.ring imports engine.control.layouts"]
