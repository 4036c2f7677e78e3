"""The sweep's outputs: ``sweep.json`` (every point, settings, metrics, tables), ``sweep.md``, plots."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascade_booth.evaluation.report import clean
from cascade_booth.runfolder import atomic_write_text
from cascade_booth.sweep.plots import write_plots
from cascade_booth.sweep.tables import averages_per_axis, best_per_metric, to_markdown

if TYPE_CHECKING:
    from cascade_booth.sweep.plan import SweepPlan

SCHEMA = "cascade-booth/sweep/v1"


def result_points(plan: SweepPlan) -> list[dict[str, Any]]:
    """The rows of ``sweep.json``: each point's settings, metrics and folders (relative to OUT)."""
    def rel(path: Path) -> str:
        return os.path.relpath(path, plan.out)

    return [{"name": pp.point.name, "settings": pp.point.settings, "class_noun": pp.point.class_noun,
             "metrics": pp.recorded.get("metrics") or {}, "stage_one": rel(pp.stage_one), "run": rel(pp.run),
             "evaluation": rel(pp.evaluation / "metrics.json")} for pp in plan.points]


def build_result(plan: SweepPlan) -> dict[str, Any]:
    """Everything ``sweep.json`` holds: the spec, the axes, every point, best per metric, averages."""
    points = result_points(plan)
    per_prompt = sorted({pp.eval["images_per_prompt"] for pp in plan.points})
    return clean({
        "schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": plan.spec.to_dict(), "axes": plan.spec.grid,
        "images_per_prompt": ", ".join(map(str, per_prompt)),
        "stage_one_runs": len({pp.stage_one for pp in plan.points}),
        "points": points, "best": best_per_metric(points), "averages": averages_per_axis(points, plan.spec.grid),
    })


def write_outputs(plan: SweepPlan, echo: Callable[[str], None]) -> dict[str, Any]:
    """Write ``OUT/sweep.json``, ``OUT/plots/*.png`` (with matplotlib) and ``OUT/sweep.md``; returns the result."""
    result = build_result(plan)
    plots, note = write_plots(result, plan.out / "plots")
    result["plots"] = [os.path.relpath(p, plan.out) for p in plots]
    atomic_write_text(plan.out / "sweep.json", json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(plan.out / "sweep.md", to_markdown(result, note))
    echo(f"wrote {plan.out / 'sweep.json'}")
    echo(f"wrote {plan.out / 'sweep.md'}")
    echo(note if note else f"wrote {len(plots)} plot(s) in {plan.out / 'plots'}")
    return result
