"""Memory-space names and their indexes, shared by every process of an instance."""

from __future__ import annotations

import numpy as np

from engine.config import valid_space
from engine.errors import InvalidInput, shown
from engine.control.layouts import LOCK_CONTROL, NAME_BYTES
from engine.control.instance import CONTROL_LOCK_TIMEOUT_S, Instance
from engine.control.records import WORKER


class SpaceRegistry:
    """Space name ↔ index, shared by all processes through the control block.

    Names are appended under control lock 0 and published by bumping
    ``hdr.spaces`` after the name bytes are written; readers scan only
    below that count.
    """

    def __init__(self, inst: Instance):
        self.inst = inst
        self.cache: dict[str, int] = {}
        self.max_spaces = inst.params.max_spaces

    def _scan(self) -> None:
        for i, name in self.inst.space_names().items():
            if name:
                self.cache.setdefault(name, i)

    def lookup(self, name: str) -> int | None:
        if name not in self.cache:
            self._scan()
        return self.cache.get(name)

    def register(self, name: str) -> int:
        # The one gate into the name table: whatever the caller checked, a name
        # that does not validate is never stored (its first NAME_BYTES bytes
        # could be another space's name).
        if not valid_space(name):
            raise InvalidInput(f"memory space {shown(name)} must match [a-z0-9_-]{{3,64}}")
        idx = self.lookup(name)
        if idx is not None:
            return idx
        hdr = self.inst.header
        # Producers wait a bounded time (LockTimeout: a stopped holder); a
        # recovering worker waits as long as it takes (it heartbeats meanwhile).
        timeout = None if self.inst.role == WORKER else CONTROL_LOCK_TIMEOUT_S
        with self.inst.locks.hold(LOCK_CONTROL, timeout):
            self._scan()
            if name in self.cache:
                return self.cache[name]
            n = int(hdr.spaces)
            if n >= self.max_spaces:
                raise InvalidInput(f"engine already holds --max-spaces={self.max_spaces} memory spaces; "
                                   f"cannot add {shown(name)}")
            raw = name.encode("ascii")[:NAME_BYTES]
            row = self.inst.ctl["space_names"][n]
            row[:] = 0
            row[: len(raw)] = np.frombuffer(raw, np.uint8)
            hdr.spaces = n + 1
            self.cache[name] = n
            return n
