"""The docs that are derived from code stay in step with it."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_doc_sections_are_current():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/gen_docs.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_setting_and_metric_is_documented():
    from engine.config import SETTINGS
    from metrics.catalog import CATALOG
    conf = (ROOT / "docs/configuration.md").read_text()
    ops = (ROOT / "docs/operations.md").read_text()
    for s in SETTINGS:
        assert f"`{s.flag}`" in conf, s.flag
    for m in CATALOG:
        assert f"`{m.full_name}`" in ops, m.full_name


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    commands = re.findall(r"^(scripts/\S+)", head, re.M)
    assert commands == ["scripts/demo", "scripts/test"]
    for c in commands:
        assert (ROOT / c).exists()
    assert "scripts/test" in (ROOT / ".ci/run").read_text()
