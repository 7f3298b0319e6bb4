"""The module map of docs/architecture.md: every module of engine/, shm/ and
metrics/ with the first sentence of its docstring, grouped by package.

Used by scripts/gen_docs.py (``modules``): the table is regenerated from the
code, and tests/ops/test_docs.py fails when the doc is stale, so the map can
no longer drift from the tree.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "shm", "metrics")
SKIP = ("_pb2.py", "_pb2_grpc.py")


def first_sentence(doc: str) -> str:
    text = " ".join(doc.strip().split())
    for end in (". ", ".\n"):
        if end in text + "\n":
            text = (text + "\n").split(end, 1)[0]
            break
    return text.rstrip(".").replace("|", "\\|")


def render_markdown() -> str:
    rows = ["| module | role |", "|---|---|"]
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name.endswith(SKIP) or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if path.name == "__init__.py" and not doc:
                continue
            rows.append(f"| `{rel}` | {first_sentence(doc) or '(no docstring)'} |")
    return "\n".join(rows)
