"""Configuration: settings declared once (``settings``), their parsers
(``parsers``), merging from command line, environment and TOML (``resolve``),
and the typed, frozen parameters a running instance publishes to every
process (``params``).
"""

import re

from engine.config.params import Params
from engine.config.resolve import Config, add_arguments, render_markdown, resolve
from engine.config.settings import ALL, BY_NAME, COMMANDS, SETTINGS, Setting

# Memory-space names (DESIGN §2); use with ``fullmatch``.
SPACE_RE = re.compile(r"^[a-z0-9_-]{3,64}$")

__all__ = ["ALL", "BY_NAME", "COMMANDS", "Config", "Params", "SETTINGS", "SPACE_RE", "Setting",
           "add_arguments", "render_markdown", "resolve"]
