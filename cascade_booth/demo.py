"""``cascade-booth demo``: the whole cascade, offline, on the bundled DreamBench clock and the tiny cascade."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cascade_booth.clikit import TqdmCallbacks, class_progress
from cascade_booth.config import load_config

CLOCK = Path(__file__).parent / "data" / "clock"
PROMPT = "a [V] clock in the jungle"


def run_demo(out: Path) -> list[Path]:
    """Train stage one and stage two on the clock photos, then render the jungle prompt."""
    from cascade_booth.runner import RenderRequest, render_run
    from cascade_booth.session import TrainRequest
    from stages import get_stage
    from stages.sr import SRRequest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    run_dir = out / "run"
    click.echo(f"demo: personalizing the tiny IF cascade on {CLOCK} -> {run_dir}")
    base = TrainRequest(subject=CLOCK, class_noun="clock", run=run_dir, config=load_config("tiny"))
    _with_progress("stage one", lambda cb: get_stage("base").run(base, cb, progress=class_progress()))
    _with_progress("stage two", lambda cb: get_stage("sr").run(SRRequest(run=run_dir), cb))
    return render_run(RenderRequest(run=run_dir, prompts=[PROMPT], out=out / "renders", seed=0))


def _with_progress(label: str, fn) -> None:
    progress = TqdmCallbacks(label)
    try:
        fn(progress.build())
    finally:
        progress.close()
