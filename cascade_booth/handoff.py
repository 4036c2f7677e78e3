"""What a run's finished stage one hands on, to stage two and to the runner.

Library code below ``stages/``: ``stages.sr`` trains on it, ``renderplan`` plans a render with it,
so neither has to import the other.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from cascade_booth.errors import InputError, ModelNotFoundError, RunError
from cascade_booth.models import resolve_model
from cascade_booth.runfolder import RunFolder
from cascade_booth.session import stage_progress


def finished_stage_one(run: RunFolder, meta: dict[str, Any]) -> dict[str, Any]:
    """``stages.base`` of a run whose stage one finished, else a RunError saying what to do."""
    base = meta.get("stages", {}).get("base", {})
    if base.get("done"):
        return base
    command = (f"cascade-booth train-base --subject {shlex.quote(str(meta.get('subject', 'PHOTOS')))} "
               f"--class-noun {shlex.quote(str(meta.get('class_noun', 'NOUN')))} --run {shlex.quote(str(run.path))}")
    held = stage_progress(run, meta, "base")
    if held:  # what it holds is continued with --resume: the plain command would be refused
        raise RunError(f"{run.path}: stage one is not finished (it holds {held}); continue it with "
                       f"`{command} --resume` and the other flags it was started with")
    raise RunError(f"{run.path}: stage one is not finished in this run folder; train it first with `{command}`")


def text_model_path(meta: dict[str, Any]) -> Path:
    """Stage one's model folder: its T5 encodes the prompts of both stages, as in IF's cascade."""
    recorded = Path(meta["stages"]["base"]["model_path"])
    if (recorded / "text_encoder").is_dir() and (recorded / "unet" / "config.json").is_file():
        return recorded
    return resolve_model(meta["models"]["base"], stage=1)


def check_sr_model(model_path: Path, spec: str, base_resolution: int) -> int:
    """Refuse a model that is not an IF super-resolution pipeline; returns its resolution."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.load_config(model_path / "unet")
    if unet.get("in_channels") != 6 or not (model_path / "image_noising_scheduler").is_dir():
        raise ModelNotFoundError(f"model '{spec}' ({model_path}) is not an IF super-resolution pipeline "
                                 "(needs a 6-channel UNet and image_noising_scheduler/)")
    size = int(unet["sample_size"])
    if size < base_resolution:
        raise InputError(f"SR model '{spec}' works at {size} px, below stage one's {base_resolution} px")
    return size
