"""Read the PromQL out of the Grafana dashboard, and make it runnable as is.

``dashboard_exprs(path)`` lists ``(panel title, expr)`` for every query target
of every panel, rows included (expanded rows keep their panels at the top
level, collapsed rows nest them under ``panels``). Template-variable queries
(``label_values(...)``) are Grafana functions, not PromQL, and are left out.

``concrete(expr)`` turns a dashboard expression into plain PromQL that
Prometheus (or ``promtool``) accepts. It performs exactly these substitutions
and raises ``ValueError`` on any other ``$`` left in the expression, so a new
Grafana macro or variable in the dashboard fails loudly instead of reaching
Prometheus half-substituted:

==========================================  ===============================
in the dashboard                            becomes
==========================================  ===============================
``$__rate_interval``                        ``rate_window`` (default ``15s``)
``$instance``, ``${instance}``,             ``.*`` (the variable's "All"
``${instance:regex}``, ``[[instance]]``     value; used only in ``=~``)
==========================================  ===============================
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "streaming.json"

_INSTANCE = re.compile(r"\$\{instance(?::regex)?\}|\$instance\b|\[\[instance\]\]")


def iter_panels(dashboard: dict):
    """Every panel, rows included, in dashboard order (nested row panels too)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(path: str | Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target of every panel of the dashboard."""
    dashboard = json.loads(Path(path).read_text())
    return [(panel.get("title", ""), target["expr"])
            for panel in iter_panels(dashboard)
            for target in panel.get("targets", [])
            if target.get("expr")]


def concrete(expr: str, rate_window: str = "15s") -> str:
    """``expr`` with the dashboard's variables replaced (see the module docstring)."""
    out = expr.replace("$__rate_interval", rate_window)
    out = _INSTANCE.sub(".*", out)
    if "$" in out:
        raise ValueError(f"unhandled Grafana variable or macro in {expr!r}")
    return out
