"""Parsers of setting values: each returns the typed value or raises ValueError
saying what is wrong (``resolve`` adds the flag, the value and its source)."""

from __future__ import annotations

import re
from typing import Any, Callable

# Use with ``fullmatch`` only: ``$`` with ``match`` lets a trailing newline through.
NAME_RE = re.compile(r"[a-z0-9_-]{1,48}")
SPACE_NAME_RE = re.compile(r"[a-z0-9_-]{3,64}")


def positive_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError("must be a positive integer")
    return n


def non_negative_int(v: Any) -> int:
    n = int(v)
    if n < 0:
        raise ValueError("must be >= 0")
    return n


def non_negative_float(v: Any) -> float:
    x = float(v)
    if not x >= 0:
        raise ValueError("must be >= 0")
    return x


def positive_float(v: Any) -> float:
    x = float(v)
    if not x > 0:
        raise ValueError("must be > 0")
    return x


def fraction(v: Any) -> float:
    x = float(v)
    if not 0 < x < 1:
        raise ValueError("must be between 0 and 1 (exclusive)")
    return x


def workers(v: Any) -> int | str:
    if str(v).strip().lower() == "auto":
        return "auto"
    return positive_int(v)


def instance_name(v: Any) -> str:
    s = str(v)
    if not NAME_RE.fullmatch(s):
        raise ValueError("must match [a-z0-9_-]{1,48}")
    return s


def space(v: Any) -> str:
    s = str(v)
    if not SPACE_NAME_RE.fullmatch(s):
        raise ValueError("must match [a-z0-9_-]{3,64}")
    return s


def cpus(v: Any) -> tuple[int, ...] | None:
    """Parse a CPU list like ``0-3,6``."""
    if v is None or str(v).strip() == "":
        return None
    out: list[int] = []
    for part in str(v).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError("must be a CPU list like 0-3,6")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"range {part} is reversed")
        out.extend(range(lo, hi + 1))
    return tuple(dict.fromkeys(out))


def addr(v: Any) -> str:
    s = str(v)
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT")
    return s


def addr_or_off(v: Any) -> str:
    return "off" if str(v).strip().lower() == "off" else addr(v)


def optional_path(v: Any) -> str | None:
    return None if v is None or str(v) == "" else str(v)


def boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v)
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s
    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def mix(v: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in str(v).split(","):
        name, sep, weight = part.partition(":")
        name = name.strip()
        if not sep or name not in ("high", "normal", "low"):
            raise ValueError("must look like high:0.1,normal:0.7,low:0.2")
        out[name] = float(weight)
        if out[name] < 0:
            raise ValueError(f"weight of {name} is negative")
    if sum(out.values()) <= 0:
        raise ValueError("weights add up to zero")
    return out


def id_list(text: str) -> tuple[int, ...]:
    """Ids (integers in [0, 2**64)) separated by commas and/or whitespace; may be empty."""
    out = []
    for part in text.replace(",", " ").split():
        try:
            x = int(part, 10)
        except ValueError:
            x = -1
        if not 0 <= x < 2 ** 64:
            shown = part if len(part) <= 30 else part[:30] + "…"
            raise ValueError(f"{shown!r} is not an id (an integer in [0, 2**64))")
        out.append(x)
    return tuple(out)


def optional_ids(v: Any) -> tuple[int, ...] | None:
    """``"1,2,3"`` (flag, environment) or ``[1, 2, 3]`` (TOML); None when unset."""
    if isinstance(v, (list, tuple)):
        v = ",".join(str(x) for x in v)
    if v is None or str(v).strip() == "":
        return None
    return id_list(str(v))


def optional_positive_int(v: Any) -> int | None:
    return None if v is None or str(v) == "" else positive_int(v)


def optional_floats(v: Any) -> tuple[float, ...] | None:
    if v is None or str(v).strip() == "":
        return None
    return tuple(float(x) for x in str(v).split(","))


def optional_name(v: Any) -> str | None:
    """A name like ``instance_name``, or unset."""
    return None if v is None or str(v) == "" else instance_name(v)


def optional_addr(v: Any) -> str | None:
    return None if v is None or str(v) == "" else addr(v)


def urls(v: Any) -> tuple[str, ...] | None:
    """Comma-separated server URLs (``nats://host:port``; a bare host:port gets ``nats://``)."""
    if v is None or str(v).strip() == "":
        return None
    out = []
    for part in str(v).split(","):
        part = part.strip()
        if not part:
            raise ValueError("has an empty URL between commas")
        if "://" not in part:
            part = "nats://" + part
        scheme, _, rest = part.partition("://")
        if scheme not in ("nats", "tls") or not rest:
            raise ValueError(f"{part!r} is not a nats:// or tls:// URL")
        out.append(part)
    return tuple(out)


def int_between(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        n = int(v)
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return n
    return parse
