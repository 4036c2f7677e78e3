"""``cascade-booth demo``: the whole cascade, offline, on the bundled DreamBench clock and the tiny cascade."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click

from cascade_booth.clikit import TqdmCallbacks, class_progress
from cascade_booth.config import load_config
from cascade_booth.diskspace import WriteError, failed, reason
from cascade_booth.errors import InputError
from cascade_booth.runfolder import atomic_path
from cascade_booth.writable import check_cache, check_writable

CLOCK = Path(__file__).parent / "data" / "clock"
PROMPT = "a [V] clock in the jungle"
MARKER = ".cascade-booth-demo"  # in the demo's run folder: what a later demo may remove


def run_demo(out: Path) -> list[Path]:
    """Train stage one and stage two on the clock photos, then render the jungle prompt."""
    from cascade_booth.runner import RenderRequest, render_run
    from cascade_booth.session import TrainRequest
    from stages import get_stage
    from stages.sr import SRRequest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    check_writable(out, "--out")
    check_cache()
    run_dir = out / "run"
    start_over(run_dir)
    click.echo(f"demo: personalizing the tiny IF cascade on {CLOCK} -> {run_dir}")
    base = TrainRequest(subject=CLOCK, class_noun="clock", run=run_dir, config=load_config("tiny"))
    _with_progress("stage one", lambda cb: get_stage("base").run(base, cb, progress=class_progress()))
    _with_progress("stage two", lambda cb: get_stage("sr").run(SRRequest(run=run_dir), cb))
    return render_run(RenderRequest(run=run_dir, prompts=[PROMPT], out=out / "renders", seed=0))


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
    """Remove an earlier demo's ``run_dir`` and mark the new one; refuse to touch anything else there."""
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
