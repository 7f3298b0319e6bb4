"""Latency CDF pictures shared by the benches (matplotlib, log x)."""

from __future__ import annotations

import numpy as np


def line(ax, samples, label: str, color: str) -> None:
    """One empirical CDF; the label gets the count, p50 and p99 (ms)."""
    xs = np.sort(np.asarray(samples))
    ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=color,
            label=f"{label}: {len(xs)} q, p50 {np.percentile(xs, 50):.2f}, p99 {np.percentile(xs, 99):.2f} ms",
            marker="o" if len(xs) < 30 else None, markersize=3)


def axes(ax, xlabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of queries")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def save(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
