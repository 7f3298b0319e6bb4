"""Log output: ``--log-format text`` for people, ``json`` for log shippers.

JSON: one object per line on stderr, with the keys

    time       RFC 3339 UTC with milliseconds ("2026-01-31T12:00:00.123Z")
    level      debug | info | warning | error | critical
    role       supervisor | worker | gateway | exporter | cli (engine.identity)
    slot       worker slot, null for the other roles
    pid        process id
    instance   the --name of the instance
    logger     logger name (engram.supervisor, engram.worker, ...)
    message    the formatted message
    exception  the traceback, only when the record carries one

so Loki, Elasticsearch or Vector can index role and slot without a parsing
rule. ``configure`` runs in the CLI before the supervisor forks; children
inherit the handler and fill role and slot from ``engine.identity`` at
format time, each in its own copy of that module's state.

Python code that writes to stderr outside logging (the traceback a dying
forked child prints, warnings) would break "one object per line", so in JSON
mode ``sys.stderr`` is replaced by a writer that wraps each such line in an
object too (logger ``stderr``). Output of C libraries that write to file
descriptor 2 themselves is not covered (see docs/operations.md).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time

from engine import identity

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def _rfc3339(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str = ""):
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _rfc3339(record.created), "level": record.levelname.lower(), "role": identity.ROLE,
               "slot": identity.SLOT, "pid": record.process, "instance": self.instance,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


class LinesAsRecords(io.TextIOBase):
    """A text stream that logs each complete line it is given as one record.

    Holds partial lines until their newline; ``flush`` sends what is held."""

    def __init__(self, logger: logging.Logger, level: int = logging.ERROR):
        self.logger = logger
        self.level = level
        self._held = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._held += text
        *lines, self._held = self._held.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, line)
        return len(text)

    def flush(self) -> None:
        if self._held.strip():
            self.logger.log(self.level, self._held)
        self._held = ""


def configure(level: str = "info", fmt: str = "text", instance: str = "", stream=None) -> None:
    """Install the one stderr handler of this process (replacing any)."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(instance) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if fmt == "json":
        # The handler keeps the real stream; everything else written to stderr becomes records.
        stray = logging.getLogger("stderr")
        sys.stderr = LinesAsRecords(stray)
