"""Shared-memory layouts documented in docstrings stay in step with the code.

* A pasted ``Layout.describe()`` table (any docstring of engine/, shm/,
  metrics/) is rebuilt from the parameters its paragraph states
  (``S = 2 slots, M = 1024 ...``) and compared as text.
* Symbolic tables (offsets and sizes written with C, D, K, R ...) are
  evaluated for a sizing where every symbol has a different value and
  compared with the layout's offsets, sizes, dtypes and shapes: the metric
  array, a ring (read back through the bytes of a real ``Ring``), the query
  segment, the session rows and the record arrays of the control block.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.control import layouts, query, records, sessions
from metrics import array as metric_array
from metrics.array import MetricArray
from shm import ring as ring_module
from shm.layout import ALIGN, Layout, align
from shm.lock import LockFile
from shm.ring import Ring, ring_bytes
from tests.harness import ROOT

DESCRIBE_HEADER = Layout(1, []).describe().splitlines()[0]

# Functions whose layouts a docstring may show as a describe() table: the
# paragraph above the table names the function and states every parameter.
FACTORIES = {
    "control_layout": (("S", "M", "X"), lambda S, M, X: layouts.control_layout(S, M, X)),
    "query_layout": (("Q", "S", "B", "K", "D"), lambda Q, S, B, K, D: layouts.query_layout(
        SimpleNamespace(query_slots=Q, slots=S, query_batch=B, max_k=K, dim=D))),
}


def docstrings():
    """(file, docstring) of every module, class and function of ours."""
    for pkg in ("engine", "shm", "metrics"):
        for f in sorted((Path(ROOT) / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        yield str(f.relative_to(ROOT)), doc


def block_after(lines: list[str], i: int) -> list[str]:
    """The indented lines from ``i`` up to the first blank line, dedented."""
    out = []
    for line in lines[i:]:
        if not line.strip():
            break
        out.append(line)
    return textwrap.dedent("\n".join(out)).splitlines()


def describe_tables(doc: str) -> list[tuple[str, list[str]]]:
    """(introducing paragraph, table lines) for every describe() table in ``doc``."""
    lines = doc.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() == DESCRIBE_HEADER:
            start = i - 1
            while start >= 0 and not lines[start].strip():
                start -= 1
            para_start = start
            while para_start > 0 and lines[para_start - 1].strip():
                para_start -= 1
            found.append((" ".join(lines[para_start:start + 1]), block_after(lines, i)))
    return found


def stated(paragraph: str, symbols: tuple[str, ...]) -> dict[str, int]:
    values = dict(re.findall(r"\b([A-Z])\s*=\s*(\d+)\b", paragraph))
    missing = [s for s in symbols if s not in values]
    assert not missing, f"the paragraph does not state {missing}: {paragraph!r}"
    return {s: int(values[s]) for s in symbols}


# -- pasted describe() tables ----------------------------------------------------------
def all_describe_tables():
    return [(path, para, table) for path, doc in docstrings() for para, table in describe_tables(doc)]


def test_the_control_block_table_is_there():
    paths = [path for path, para, _ in all_describe_tables() if "control_layout" in para]
    assert paths == ["engine/control/layouts.py"]


@pytest.mark.parametrize("path, paragraph, table", all_describe_tables(),
                         ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(all_describe_tables())])
def test_pasted_describe_table_matches_the_layout(path, paragraph, table):
    named = [name for name in FACTORIES if f"``{name}``" in paragraph]
    assert len(named) == 1, f"{path}: the paragraph above a describe() table must name one of {list(FACTORIES)}"
    symbols, factory = FACTORIES[named[0]]
    layout = factory(**stated(paragraph, symbols))
    assert "\n".join(table) == layout.describe(), (
        f"{path}: the table of {named[0]} drifted; paste this instead:\n{layout.describe()}")


def test_table_finder_sees_a_drifted_table():
    """The parts of the check, on a docstring with one wrong offset."""
    good = layouts.control_layout(3, 8, 4).describe()
    doc = ("Intro.\n\nShown for ``control_layout`` with S = 3, M = 8\nand X = 4::\n\n"
           + textwrap.indent(good.replace(" 64 ", " 65 ", 1), "    ") + "\n\nMore.")
    ((para, table),) = describe_tables(doc)
    assert stated(para, ("S", "M", "X")) == {"S": 3, "M": 8, "X": 4}
    assert len(table) == len(good.splitlines()) and "\n".join(table) != good
    with pytest.raises(AssertionError, match="does not state"):
        stated("Shown for S = 3 only", ("S", "M"))


# -- symbolic tables ------------------------------------------------------------------
def dtype(text: str) -> np.dtype:
    """``u64`` / ``f32`` (bits) or a numpy name (``int64``)."""
    m = re.fullmatch(r"([iuf])(8|16|32|64)", text)
    if m:
        return np.dtype({"i": "int", "u": "uint", "f": "float"}[m[1]] + m[2])
    return np.dtype(text)


def shape(text: str, symbols: dict) -> tuple[int, ...]:
    return tuple(int(eval(part, {"__builtins__": {}}, symbols)) for part in text.split(","))


def typed_rows(block: list[str]) -> list[tuple[str, str, str]]:
    """(name, dtype, shape) of rows like ``req     i64[Q, 8]  ...``."""
    rows = [re.match(r"(\w+)\s+(\w+)\[([^\]]*)\]", line) for line in block]
    return [(m[1], m[2], m[3]) for m in rows if m]


def test_metric_array_table():
    doc = MetricArray.__doc__
    lines = textwrap.dedent(doc).splitlines()
    table = block_after(lines, next(i for i, line in enumerate(lines) if line.split() == ["offset", "bytes", "field"]))
    n_workers, max_spaces, producers = 3, 5, 7
    layout = MetricArray.layout(n_workers, max_spaces, producers)
    fields = {f.name: f for f in layout.fields}
    R, C = fields["cells"].shape
    symbols = {"R": R, "C": C}
    assert R == metric_array.Rows(n_workers, producers).total and C % 8 == 0
    rows = [re.match(r"(\d+)\s+(\S+)\s+(\w+):?\s*(?:(\w+)\[([^\]]*)\])?", line) for line in table]
    rows = [m for m in rows if m]
    assert [m[3] for m in rows] == ["preamble"] + [f.name for f in layout.fields]
    assert (int(rows[0][1]), int(rows[0][2])) == (0, 16)
    for m in rows[1:]:
        f = fields[m[3]]
        assert int(m[1]) == layout.offsets[f.name], m[0]
        assert eval(m[2], {"__builtins__": {}}, symbols) == f.nbytes, m[0]
        assert dtype(m[4]) == np.dtype(f.dtype) and shape(m[5], symbols) == f.shape, m[0]
    # "Row r starts at byte 128 + 8*C*r"
    start = re.search(r"Row ``r`` starts at byte ``([^`]+)``", doc)[1]
    arr = MetricArray.in_memory(n_workers, max_spaces, producers)
    base = np.frombuffer(arr._buf, np.uint8).ctypes.data
    for r in (0, 1, R - 1):
        assert arr.cells[r].ctypes.data - base == eval(start, {"__builtins__": {}}, {"C": C, "r": r})


def test_ring_table(tmp_path):
    lines = textwrap.dedent(ring_module.__doc__).splitlines()
    table = block_after(lines, next(i for i, line in enumerate(lines) if line.split() == ["off", "size", "field"]))
    rows = [re.match(r"(\d+|\.\.\.)\s+(\S+)\s+(?:\(align 64\)\s+)?(\w+)\s*(\w*)", line) for line in table[1:]]
    rows = [m for m in rows if m]
    K, C, D = 3, 10, 4
    symbols = {"K": K, "C": C, "D": D}
    offset = 2 * ALIGN  # a ring that does not start at 0
    buf = bytearray(offset + ring_bytes(C, D, K))
    ring = Ring(buf, offset, C, D, K, LockFile(str(tmp_path / "locks")), 0, init=True)

    def u64(at: int) -> int:
        return int(np.frombuffer(buf, np.uint64, 1, offset + at)[0])

    documented = {}
    end = 0
    for m in rows:
        at = align(end) if m[1] == "..." else int(m[1])
        size = eval(m[2], {"__builtins__": {}}, symbols)
        documented[m[3]] = (at, size, m[4])
        end = at + size
    assert list(documented) == ["head", "claimed", "tail", "capacity", "dim", "claim_slots", "reserved",
                                "publish", "claim", "ids", "space", "enq_time", "vectors",
                                "stamps", "kinds"]
    assert align(end) == ring_bytes(C, D, K)
    assert [u64(documented[k][0]) for k in ("capacity", "dim", "claim_slots")] == [C, D, K]

    seen = {}

    def on_publish(n):  # inside the journal's open window
        seen["journal"] = [u64(documented["publish"][0] + 8 * i) for i in range(5)]
    ring.enqueue(np.arange(6, dtype=np.uint64), np.ones((6, D), np.float32), 9, now=12.5,
                 stamps=np.arange(100, 106, dtype=np.uint64), kind=1, journal=(41, 42), on_publish=on_publish)
    assert documented["publish"][1] == 40 and seen["journal"] == [1, 0, 6, 41, 42]
    claim = ring.claim(4, claimer=7)
    at = documented["claim"][0] + 32 * claim.entry
    assert [u64(at), u64(at + 8), u64(at + 16), u64(at + 24)] == [0, 4, 7, 1]
    assert documented["claim"][1] == 32 * K
    ring.commit(claim)
    assert [u64(documented[k][0]) for k in ("head", "claimed", "tail")] == [6, 4, 4]
    base = np.frombuffer(buf, np.uint8).ctypes.data + offset
    for name, arr in (("ids", ring.ids), ("space", ring.spaces), ("enq_time", ring.times),
                      ("vectors", ring.vectors), ("stamps", ring.stamps), ("kinds", ring.kinds)):
        at, size, kind = documented[name]
        assert arr.ctypes.data - base == at and arr.nbytes == size, name
        assert arr.dtype == dtype(kind), name
    assert ring.times[0] == 12.5 and ring.spaces[0] == 9
    assert ring.stamps[5] == 105 and ring.kinds[0] == 1


def test_query_segment_table():
    lines = textwrap.dedent(query.__doc__).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Query segment layout"))
    assert "``engine.control.layouts.query_layout``" in " ".join(lines[start:start + 2])
    table = typed_rows(block_after(lines, start + 3))
    symbols = {"Q": 3, "S": 5, "B": 7, "K": 11, "D": 13}
    layout = FACTORIES["query_layout"][1](**symbols)
    assert [r[0] for r in table] == [f.name for f in layout.fields]
    for (name, kind, dims), f in zip(table, layout.fields):
        assert dtype(kind) == np.dtype(f.dtype) and shape(dims, symbols) == f.shape, name


def test_session_row_table():
    lines = textwrap.dedent(sessions.__doc__).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Row layout"))
    names = [line.split()[0] for line in block_after(lines, start + 2)]
    columns = {k: v for k, v in vars(sessions).items() if re.fullmatch(r"S_[A-Z_]+", k)}
    assert names == sorted(columns, key=columns.get)
    assert [columns[n] for n in names] == list(range(len(names)))
    field = next(f for f in layouts.control_layout(2, 4, 3).fields if f.name == "sessions")
    assert field.shape == (3, len(names)) and np.dtype(field.dtype) == np.dtype("int64")
    assert re.search(r"i64\[--max-sessions, (\d+)\]", sessions.__doc__)[1] == str(len(names))


def test_record_arrays_named_in_records_doc():
    symbols = {"S": 5}
    control = {f.name: f for f in layouts.control_layout(5, 4, 3).fields}
    named = re.findall(r"``(\w+) (\w+)\[([^\]]*)\]``", records.__doc__)
    assert [n[0] for n in named] == ["hdr", "slot_sup", "slot_live"]
    for name, kind, dims in named:  # numpy codes here, as describe() prints them
        assert np.dtype(control[name].dtype) == np.dtype(kind), name
        assert control[name].shape == shape(dims, symbols), name
