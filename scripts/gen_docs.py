#!/usr/bin/env python3
"""Regenerate the parts of docs/ that are derived from code.

Sections between ``<!-- BEGIN GENERATED: <key> -->`` and
``<!-- END GENERATED: <key> -->`` are replaced by the output of the matching
generator. ``--check`` exits 1 (and says which file) when a file is stale;
tests/test_docs.py runs that check.
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import config  # noqa: E402
from metrics import catalog  # noqa: E402
from scripts import modmap  # noqa: E402

GENERATORS = {
    "settings": config.render_markdown,
    "metrics": catalog.render_markdown,
    "modules": modmap.render_markdown,
}
FILES = ["docs/configuration.md", "docs/operations.md", "docs/architecture.md"]
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n)(.*?)(<!-- END GENERATED: \2 -->)", re.S)


def render(text: str) -> str:
    return _BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group(2)]().rstrip("\n") + "\n" + m.group(4), text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for rel in FILES:
        path = ROOT / rel
        text = path.read_text()
        new = render(text)
        if new != text:
            if check:
                stale.append(rel)
            else:
                path.write_text(new)
                print(f"updated {rel}")
    if stale:
        print("stale generated sections in: " + ", ".join(stale) + " (run scripts/gen_docs.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
