"""Optional figures: each metric against each swept value (``pip install 'cascade-booth[plot]'``).

One PNG per (metric, axis): every point as a dot at its axis value, and the mean per value as a line.
Axis values are placed in grid order, evenly spaced and labelled (learning rates, on/off and class
nouns alike), so the figure reads like the averages table beside it in ``sweep.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cascade_booth.runfolder import atomic_path
from cascade_booth.sweep.spec import format_value
from cascade_booth.sweep.tables import LABELS, LOWER_IS_BETTER, METRICS

SKIPPED = ("plots skipped: matplotlib is not installed "
           "(`pip install 'cascade-booth[plot]'` or `pip install matplotlib`, then rerun the sweep)")


def plot_name(metric: str, axis: str) -> str:
    return f"{metric}_vs_{re.sub(r'[^A-Za-z0-9_]+', '_', axis)}.png"


def _figure(plt, metric: str, axis: str, values: list[Any], points: list[dict], rows: list[dict]):
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    for index, value in enumerate(values):
        ys = [p["metrics"].get(metric) for p in points if p["settings"].get(axis) == value]
        ys = [y for y in ys if isinstance(y, int | float)]
        ax.scatter([index] * len(ys), ys, color="tab:blue", alpha=0.5, s=18)
    means = [(i, r[metric]) for i, r in enumerate(rows) if r[metric] is not None]
    if means:
        ax.plot([i for i, _ in means], [m for _, m in means], color="tab:red", marker="o", label="mean")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(values)), [format_value(v) for v in values])
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(axis)
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    ax.set_ylabel(f"{LABELS[metric]} ({better} is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_plots(result: dict[str, Any], folder: Path) -> tuple[list[Path], str | None]:
    """Write ``<metric>_vs_<axis>.png`` into ``folder``; (paths, None), or ([], note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], SKIPPED
    paths = []
    for axis, rows in result["averages"].items():
        values = result["axes"][axis]
        for metric in METRICS:
            if all(r[metric] is None for r in rows):
                continue  # e.g. PRES without class prompts
            fig = _figure(plt, metric, axis, values, result["points"], rows)
            path = folder / plot_name(metric, axis)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")
            plt.close(fig)
            paths.append(path)
    return paths, None
