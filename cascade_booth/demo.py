"""``cascade-booth demo``: personalization you can see, offline, on the world cascade (issue 13).

One held-out world subject (a design the pretraining never drew), both stages trained on its photos
with the world preset at demo speed, then the subject in several contexts beside the same prompts
without ``[V]`` (the paper's class prompts: drift) and from the pretrained cascade (the baseline),
read back by the world's attribute net (``cascade_booth.world.readback``). Everything lands in OUT:
``subject/`` (the photos), ``run/`` (the run folder), ``renders/``, ``demo.png`` and ``report.html``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import click

from cascade_booth.clikit import TqdmCallbacks, class_progress
from cascade_booth.config import load_config, override
from cascade_booth.diskspace import WriteError, failed, reason
from cascade_booth.errors import InputError
from cascade_booth.runfolder import atomic_path
from cascade_booth.writable import check_cache, check_writable

CLOCK = Path(__file__).parent / "data" / "clock"  # the bundled DreamBench photos (the tiny demo before the world)
SUBJECT = ("clock", 1)  # world subject: class and seed (a held-out design: a green clock with stripes)
CONTEXTS = ["beach", "snow", "cobblestone", "city"]
MARKER = ".cascade-booth-demo"  # in the demo's folders: what a later demo may remove
# The world preset at demo speed: fewer class images and steps (run.json records what was used).
DEMO_SETTINGS = {"prior.class_images": 16, "base.steps": 300, "base.checkpoint_every": 0, "sr.steps": 60,
                 "sr.checkpoint_every": 0}
RENDER_STEPS = 20


@dataclass
class DemoResult:
    figures: dict
    grid: Path
    report: Path


def run_demo(out: Path) -> DemoResult:
    """Make the subject's photos, train stage one and stage two on them, render, read back, report."""
    from cascade_booth.session import TrainRequest
    from cascade_booth.world.cli import write_subject_photos
    from cascade_booth.world.readback import score_run
    from stages import get_stage
    from stages.sr import SRRequest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    check_writable(out, "--out")
    check_cache()
    subject, run_dir = out / "subject", out / "run"
    for folder in (subject, run_dir, out / "renders"):
        start_over(folder)
    cls, seed = SUBJECT
    photos = write_subject_photos(subject, cls, seed, 5)
    click.echo(f"demo: {photos}; personalizing the world cascade on it -> {run_dir}")
    config = override(load_config("world"), DEMO_SETTINGS, where="the demo's settings")
    base = TrainRequest(subject=subject, class_noun=cls, run=run_dir, config=config)
    _with_progress("stage one", lambda cb: get_stage("base").run(base, cb, progress=class_progress()))
    _with_progress("stage two", lambda cb: get_stage("sr").run(SRRequest(run=run_dir), cb))
    click.echo("demo: rendering the subject in new contexts, the class prompts and the pretrained cascade")
    scored = score_run(run_dir, subject, out / "renders", num_images=1, steps=RENDER_STEPS, contexts=CONTEXTS)
    from cascade_booth.world.demoreport import write_report

    grid, report = write_report(out, subject, scored)
    return DemoResult(scored.figures, grid, report)


def made_by_demo(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a demo's run: its marker, or (demos before the marker) the bundled photos on tiny."""
    if run_dir.is_symlink() or not run_dir.is_dir():
        return False
    if (run_dir / MARKER).is_file():
        return True
    try:
        meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("subject") == str(CLOCK.resolve()) and meta.get("models") == {"base": "tiny", "sr": "tiny"}


def start_over(run_dir: Path) -> None:
    """Remove an earlier demo's folder ``run_dir`` and mark the new one; refuse to touch anything else there."""
    if run_dir.exists() or run_dir.is_symlink():
        if not made_by_demo(run_dir):
            raise InputError(f"{run_dir} exists and was not made by `cascade-booth demo`, so the demo leaves it as "
                             "it is: pass another --out, or move it away")
        trash = run_dir.with_name(f".{run_dir.name}-old-{os.getpid()}")
        try:
            os.replace(run_dir, trash)  # gone at once under its name, even if the removal stops half-way
            shutil.rmtree(trash)
        except OSError as err:
            raise WriteError(f"cannot remove the earlier demo run {run_dir}: {reason(err)}", err) from None
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise WriteError(failed(run_dir, err), err) from None
    with atomic_path(run_dir / MARKER) as tmp:
        tmp.write_text("made by `cascade-booth demo`: a later demo replaces this folder\n")


def _with_progress(label: str, fn) -> None:
    progress = TqdmCallbacks(label)
    try:
        fn(progress.build())
    finally:
        progress.close()
