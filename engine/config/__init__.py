"""Configuration: settings declared once (``settings``), their parsers
(``parsers``), merging from command line, environment and TOML (``resolve``),
and the typed, frozen parameters a running instance publishes to every
process (``params``).
"""

from engine.config.params import Params
from engine.config.parsers import SPACE_NAME_RE
from engine.config.resolve import Config, add_arguments, render_markdown, resolve
from engine.config.settings import ALL, BY_NAME, COMMANDS, SETTINGS, Setting

# Memory-space names (DESIGN §2). Use with ``fullmatch`` only (``valid_space``):
# with ``match``, ``$`` also matches before a trailing newline, so "a"*64 + "\n"
# passed for a space name, was stored as its first 64 bytes, and after a
# restart was the same space as "a"*64.
SPACE_RE = SPACE_NAME_RE


def valid_space(name: object) -> bool:
    """Whether ``name`` is a memory-space name (the whole string, DESIGN §2)."""
    return isinstance(name, str) and SPACE_RE.fullmatch(name) is not None


__all__ = ["ALL", "BY_NAME", "COMMANDS", "Config", "Params", "SETTINGS", "SPACE_RE", "Setting",
           "add_arguments", "render_markdown", "resolve", "valid_space"]
