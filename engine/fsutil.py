"""Durable file updates shared by every process that writes the data directory.

``atomic_write`` is the one way a small file (a manifest, an exit record)
is replaced: write a temp file, fsync it, rename it over the old one, fsync
the directory, so a crash leaves either the old file or the new one, never
a torn one (rename is atomic within a file system; the directory fsync makes
the rename itself survive a power loss).
"""

from __future__ import annotations

import os
from typing import Callable


def fsync_dir(path: str) -> None:
    """Make a create, rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable | bytes, mode: str = "wb") -> None:
    """Replace ``path`` with what ``write(fh)`` writes (or with the bytes given)."""
    tmp = f"{path}.tmp"
    with open(tmp, mode) as fh:
        if callable(write):
            write(fh)
        else:
            fh.write(write)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
