"""``engram-stream status``: the table of a status report (``engine.control.report``).

Each process appears with the title it gives itself (``engine.identity``),
so what ``status`` prints is what ``ps``/``top`` show.
"""

from __future__ import annotations

from engine.recallhealth import report as recall_report


def processes(st: dict) -> list[tuple[int | None, str]]:
    """(pid, title) of every process of the instance, supervisor first."""
    out = [(st["pid"], st["title"])]
    out += [(w["pid"], w["title"]) for w in st["workers"]]
    out += [(c["pid"], c["title"]) for c in (st.get("exporter"), st.get("gateway")) if c is not None]
    return out


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def render(st: dict) -> str:
    lines = [f"instance {st['name']}  supervisor pid {st['pid']}  {st['state']}  "
             f"dim {st['dim']} {st['metric']}  backpressure {st['backpressure']} "
             f"(pressure {st['pressure']:.1%})"]
    gw = st.get("gateway")
    if gw is not None:
        lines.append(f"gateway pid {gw['pid'] or 'down'}  port {gw['port'] or '-'}  sessions {gw['sessions']}")
    lines.append("")
    lines.append(f"{'slot':>4}  {'pid':>8}  {'cpus':<6}  {'state':<9}  {'restarts':>8}  {'heartbeat':>9}")
    for w in st["workers"]:
        cpus = ",".join(map(str, w["cpus"])) or "-"
        age = "-" if w["heartbeat_age_s"] is None else f"{w['heartbeat_age_s']:.2f}s"
        lines.append(f"{w['slot']:>4}  {w['pid'] or '-':>8}  {cpus:<6}  {w['state']:<9}  "
                     f"{w['restarts']:>8}  {age:>9}")
    lines.append("")
    lines.append(f"{'lane':<7}  {'depth':>9}  {'capacity':>9}  {'used':>6}")
    for lane, q in st["queues"].items():
        used = q["depth"] / q["capacity"] if q["capacity"] else 0.0
        lines.append(f"{lane:<7}  {q['depth']:>9}  {q['capacity']:>9}  {used:>6.1%}")
    lines.append("")
    t = st["throughput"]
    rate = "-" if t["observations_per_second"] is None else f"{t['observations_per_second']:.0f}/s"
    rejected = ", ".join(f"{k} {v}" for k, v in t["observations_rejected_total"].items() if v)
    lines.append(f"inserted {t['observations_total']} ({rate})  rejected: {rejected or 'none'}")
    for name, label in (("observation_latency_seconds", "observation latency"),
                        ("recall_latency_seconds", "recall latency")):
        q = t[name]
        window = f"last {t['window_seconds']:g}s" if q["window"] == "interval" else "since start"
        shown = "  ".join(f"{k} {'>=' if q[k] is not None and q[k] >= q['top_bucket'] else ''}{_ms(q[k])}"
                          for k in q if k.startswith("p"))
        lines.append(f"{label} ({window}, {q['count']} samples): {shown}")
    lines += recall_report.render_lines(st.get("recall_health"), st.get("config")) + [""]
    if st["spaces"]:
        lines.append(f"{'space':<32}  {'vectors':>10}  {'shards':>6}")
        for name, sp in sorted(st["spaces"].items()):
            lines.append(f"{name:<32}  {sp['vectors']:>10}  {sp['shards']:>6}")
    else:
        lines.append("no memory spaces yet")
    lines.append("")
    lines.append(f"{'pid':>8}  process")
    for pid, text in processes(st):
        lines.append(f"{pid or '-':>8}  {text}")
    return "\n".join(lines)
