"""Declarative layouts: named, 64-byte aligned numpy arrays inside one buffer.

A ``Layout`` is a list of fields ``(name, dtype, shape)``; fields are placed in
order, each at the next 64-byte boundary (a cache line, so two writers of
different fields never share a line). ``Layout.describe()`` prints the
offsets; the modules that declare layouts paste that table into their
docstrings and a test keeps the two in step.

A magic number and a layout version open every segment built from a
``Layout`` (16 bytes at offset 0), so attaching to a foreign or stale segment
fails with ``LayoutError`` instead of reading garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shm.errors import LayoutError

ALIGN = 64
MAGIC = 0x454E4752414D5348  # "ENGRAMSH"


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


class Layout:
    """Offsets of named arrays in a segment; the first 64 bytes are the preamble."""

    def __init__(self, version: int, fields: list[Field]):
        self.version = version
        self.fields = fields
        self.offsets: dict[str, int] = {}
        off = ALIGN  # preamble: magic u64, version u64
        for f in fields:
            off = align(off)
            self.offsets[f.name] = off
            off += f.nbytes
        self.size = align(off)

    def describe(self) -> str:
        rows = ["offset      bytes  field"]
        rows.append(f"{0:>6} {16:>10}  preamble (magic u64, version u64)")
        for f in self.fields:
            rows.append(f"{self.offsets[f.name]:>6} {f.nbytes:>10}  {f.name} {f.dtype}{list(f.shape)}")
        return "\n".join(rows)

    def init(self, buf) -> None:
        pre = np.frombuffer(buf, np.uint64, 2, 0)
        pre[1] = self.version
        pre[0] = MAGIC  # written last: a reader seeing the magic sees a full init

    def views(self, buf, check: bool = True) -> dict[str, np.ndarray]:
        if len(buf) < self.size:
            raise LayoutError(f"segment is {len(buf)} bytes, layout needs {self.size}")
        if check:
            magic, version = (int(x) for x in np.frombuffer(buf, np.uint64, 2, 0))
            if magic != MAGIC:
                raise LayoutError(f"bad magic {magic:#x}: not an engram segment")
            if version != self.version:
                raise LayoutError(f"layout version {version}, expected {self.version}")
        out = {}
        for f in self.fields:
            count = int(np.prod(f.shape, dtype=np.int64))
            out[f.name] = np.frombuffer(buf, f.dtype, count, self.offsets[f.name]).reshape(f.shape)
        return out
