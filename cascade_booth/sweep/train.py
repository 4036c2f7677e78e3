"""Train one sweep point: its (shared) stage one, its run folder, its stage two; each step is skipped when done.

Stage one depends on every setting except ``sr.*`` and ``render.*``, so it trains once in
``OUT/stage-one/<key>`` for all the points that share those settings; each point's run folder
gets hard links to its weights and trains its own stage two. Both stages run with ``resume=True``:
an interrupted training continues from its newest checkpoint, a missing one starts at step 0.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cascade_booth.runfolder import RunFolder

if TYPE_CHECKING:
    from pathlib import Path

    from cascade_booth.sweep.plan import PointPlan, SweepHooks
    from cascade_booth.sweep.spec import SweepSpec


def _stage_done(run: Path, stage: str) -> bool:
    folder = RunFolder(run)
    return folder.exists() and bool(folder.read().get("stages", {}).get(stage, {}).get("done"))


def _train(stage: str, request: Any, label: str, hooks: SweepHooks) -> None:
    from stages import run_stage

    ctx = run_stage(stage, request, hooks.trainer(label) if hooks.trainer else None,
                    hooks.class_progress() if hooks.class_progress else None)
    for warning in ctx.warnings:
        hooks.echo(f"warning: {warning}")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_stage_one(pp: PointPlan) -> None:
    """Make the point's run folder: stage one's weights (hard links) and a run.json with the point's config."""
    source = RunFolder(pp.stage_one).read()
    target = RunFolder(pp.run)
    if target.exists() and target.read().get("stages", {}).get("base") == source["stages"]["base"]:
        return
    shutil.rmtree(pp.run, ignore_errors=True)  # a half-made copy, or one of an older stage one
    shutil.copytree(pp.stage_one / "base", pp.run / "base", copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    meta = copy.deepcopy(source) | {"config": pp.point.config.to_dict(), "stages": {"base": source["stages"]["base"]},
                                    "stage_one_run": str(pp.stage_one)}
    target.write(meta)  # last: run.json marks the copy complete


def train_point(spec: SweepSpec, pp: PointPlan, hooks: SweepHooks, say: Callable[[str], None]) -> None:
    from cascade_booth.session import TrainRequest
    from stages.sr import SRRequest

    if _stage_done(pp.stage_one, "base"):
        say(f"stage one: reusing {pp.stage_one}")
    else:
        say(f"stage one: training in {pp.stage_one}")
        request = TrainRequest(subject=spec.subject, class_noun=pp.point.class_noun, run=pp.stage_one,
                               config=copy.deepcopy(pp.point.config), resume=True)
        _train("base", request, "stage one", hooks)
    link_stage_one(pp)
    if not spec.sr:
        return
    if _stage_done(pp.run, "sr"):
        say("stage two: already trained")
        return
    say("stage two: training")
    _train("sr", SRRequest(run=pp.run, config=copy.deepcopy(pp.point.config), resume=True), "stage two", hooks)
