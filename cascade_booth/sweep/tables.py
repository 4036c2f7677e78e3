"""Sweep tables: every point, the best point per metric, and each metric averaged per swept value.

The per-value averages are the ablation view (like the paper's prior-preservation ablation, section
4.3): for ``prior.enabled`` = on / off, the mean of each metric over all points with that value.
DINO, CLIP-I, CLIP-T and DIV are better high; PRES (class samples that look like the subject) is
better low. A metric that a point lacks (e.g. PRES without class prompts) is left out of its means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cascade_booth.evaluation.paper import METRIC_KEYS, METRIC_LABELS, fmt
from cascade_booth.sweep.spec import format_value

METRICS = METRIC_KEYS
LABELS = METRIC_LABELS
LOWER_IS_BETTER = frozenset({"pres"})


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def arrow(metric: str) -> str:
    return "↓" if metric in LOWER_IS_BETTER else "↑"


def best_per_metric(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """For each metric, the point with the best value (the first one on ties), or None if no point has it."""
    best: dict[str, dict[str, Any] | None] = {}
    for metric in METRICS:
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        scored = [(p, v) for p in points if (v := _number(p.get("metrics", {}).get(metric))) is not None]
        if not scored:
            best[metric] = None
            continue
        point, value = max(scored, key=lambda pv: sign * pv[1])  # max keeps the first of equal values
        best[metric] = {"point": point["name"], "value": value, "settings": point["settings"]}
    return best


def averages_per_axis(points: Sequence[dict[str, Any]], axes: dict[str, list[Any]]) -> dict[str, list[dict]]:
    """``{axis: [{"value": v, "n": points with v, "dino": mean, ...}, ...]}``, values in grid order."""
    out: dict[str, list[dict]] = {}
    for axis, values in axes.items():
        rows = []
        for value in values:
            group = [p for p in points if p["settings"].get(axis) == value]
            row: dict[str, Any] = {"value": value, "n": len(group)}
            for metric in METRICS:
                numbers = [v for p in group if (v := _number(p.get("metrics", {}).get(metric))) is not None]
                row[metric] = sum(numbers) / len(numbers) if numbers else None
            rows.append(row)
        out[axis] = rows
    return out


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def _metric_header() -> list[str]:
    return [f"{LABELS[m]} {arrow(m)}" for m in METRICS]


def _marked(value: Any, is_best: bool) -> str:
    text = fmt(value)
    return f"**{text}**" if is_best and text != "–" else text


def points_table(points: Sequence[dict[str, Any]], axes: dict[str, list[Any]],
                 best: dict[str, dict | None]) -> list[str]:
    """All points: axis values, then metrics (the best value of each metric in bold)."""
    rows = []
    for p in points:
        metrics = p.get("metrics", {})
        marks = [_marked(metrics.get(m), best.get(m) is not None and best[m]["point"] == p["name"])
                 for m in METRICS]
        rows.append([p["name"], *(format_value(p["settings"][a]) for a in axes), *marks])
    return _md_table(["point", *axes, *_metric_header()], rows)


def best_table(best: dict[str, dict | None]) -> list[str]:
    rows = [[f"{LABELS[m]} {arrow(m)}", fmt(b["value"]) if b else "–", b["point"] if b else "–"]
            for m, b in best.items()]
    return _md_table(["metric", "best", "point"], rows)


def averages_table(axis: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    body = [[format_value(r["value"]), str(r["n"]), *(fmt(r[m]) for m in METRICS)] for r in rows]
    return _md_table([axis, "points", *_metric_header()], body)


def to_markdown(result: dict[str, Any], plots_note: str | None = None) -> str:
    """``sweep.md``: what was swept, all points, the best per metric, averages per swept value, plots."""
    spec, axes, points = result["spec"], result["axes"], result["points"]
    lines = ["# cascade-booth sweep", "",
             f"Subject `{spec['subject']}`, config `{spec.get('config') or 'defaults'}`, prompts "
             f"`{spec['prompts']}`, {result['images_per_prompt']} image(s) per prompt, stage two "
             f"{'trained' if spec['sr'] else 'not trained (64 px renders)'}. {len(points)} point(s); "
             f"{result['stage_one_runs']} stage-one run(s). Metrics: Ruiz et al. 2022, section 4.1 "
             "(↑ higher is better, ↓ lower is better).", ""]
    if spec.get("fixed"):
        lines += ["Fixed: " + ", ".join(f"`{k} = {format_value(v)}`" for k, v in spec["fixed"].items()), ""]
    lines += ["## All points", "", *points_table(points, axes, result["best"]), "",
              "## Best point per metric", "", *best_table(result["best"]), "",
              "## Averages per swept value", ""]
    for axis, rows in result["averages"].items():
        lines += [f"### {axis}", "", *averages_table(axis, rows), ""]
    plots = result.get("plots") or []
    if plots or plots_note:
        lines += ["## Plots", ""] + ([plots_note, ""] if plots_note else [])
        lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines).rstrip() + "\n"
