"""Everything a stage needs before training, checked before any long work starts.

``open_run`` validates the request (class noun, subject photos, model, identifier, run folder state,
config drift on resume), locks the run folder, and returns the ``run.json`` to write: the stage
writes it once training starts (``stages.common.commit``), so a refused command changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_booth import parallel
from cascade_booth.config import Config
from cascade_booth.devices import device as device  # re-exported: the runner's default
from cascade_booth.drift import check_resume
from cascade_booth.errors import InputError, RunError
from cascade_booth.identifier import (
    check_identifier,
    choose_identifier,
    class_prompt,
    instance_prompt,
    instance_template,
)
from cascade_booth.lora import LORA_WEIGHTS
from cascade_booth.runfolder import RunFolder, checkpoint_steps
from cascade_booth.text import check_training_text, load_tokenizer
from cascade_booth.versions import versions

SR_RESOLUTION = 256  # IF-II's output size: stage two needs subject photos at least this large


@dataclass
class TrainRequest:
    """What the user asked for (CLI flags or a UI), before validation."""

    subject: Path
    class_noun: str
    run: Path
    config: Config
    identifier: str | None = None
    resume: bool = False
    force: bool = False
    allow_drift: bool = False
    allow_pickle: bool = False  # --allow-pickle: also load pickled weights (``safeload.pickles``)


@dataclass
class RunContext:
    request: TrainRequest
    run: RunFolder
    meta: dict[str, Any]
    images: list = field(default_factory=list)  # images.SubjectImage
    warnings: list[str] = field(default_factory=list)
    model_path: Path | None = None  # the folder of the stage's pretrained model

    @property
    def identifier(self) -> str:
        return self.meta["identifier"]


def subject_fingerprint(images: list) -> dict[str, str]:
    return {img.path.name: img.sha256 for img in images}


def load_subject(folder: Path, min_size: int) -> tuple[list, list[str]]:
    from cascade_booth.images import load_subject_images

    return load_subject_images(Path(folder), min_size)


def _identifier_rule(cfg: Config) -> dict[str, int]:
    ident = cfg.identifier
    return {"rank_min": ident.rank_min, "rank_max": ident.rank_max, "max_chars": ident.max_chars}


def check_text(req: TrainRequest, tok) -> list[str]:
    """Class noun and a given identifier against the model's tokenizer, before any work; returns warnings."""
    return check_training_text(tok, req.class_noun.strip(), req.identifier, _identifier_rule(req.config))


def pick_identifier(req: TrainRequest, tok, recorded: dict[str, Any] | None) -> str:
    """[V]: the run's own on --resume (a later change of the picking rule is no drift), else given or chosen."""
    rule = _identifier_rule(req.config)
    if req.resume and recorded and req.identifier is None and recorded.get("identifier"):
        return recorded["identifier"]
    if req.identifier is not None:  # given, even empty: checked, never silently replaced
        return check_identifier(tok, req.identifier, req.class_noun, **rule)
    return choose_identifier(tok, req.class_noun, req.config.seed, **rule)


def open_run(req: TrainRequest, stage: str, model_path: Path, min_size: int) -> RunContext:
    """Validate the request for ``stage`` and return a locked run with the ``run.json`` to record.

    Under a launcher every process validates (read-only, same result); the main process alone locks
    the folder and checks its state, and hands the others its ``run.json``.
    """
    if not req.class_noun or not req.class_noun.strip():
        raise InputError("--class-noun is empty: name the subject's class, e.g. 'clock' or 'dog'")
    images, warnings = load_subject(req.subject, min_size)
    tok = load_tokenizer(model_path)  # once: the text checks here, the identifier in the state check
    warnings += check_text(req, tok)
    warnings += [f"{img.path.name}: {min(img.image.size)} px is below stage two's {SR_RESOLUTION} px; "
                 "train-sr will refuse it" for img in images if min(img.image.size) < SR_RESOLUTION]
    run = RunFolder(req.run)
    meta, notes = lock_stage(run, lambda: _check_state(req, stage, tok, run, images))
    return RunContext(req, run, meta, images, warnings + notes, model_path)


def stage_progress(run: RunFolder, meta: dict[str, Any], stage: str) -> str | None:
    """What a run folder holds of ``stage``'s training ("finished", checkpoints, weights), None if nothing."""
    if meta.get("stages", {}).get(stage, {}).get("done"):
        return "finished"
    steps = checkpoint_steps(run.checkpoint_root(stage))
    if steps:
        return f"checkpoints up to step {steps[-1]}"
    folder = run.stage_dir(stage)
    return "weights" if (folder / LORA_WEIGHTS).exists() or (folder / "unet").exists() else None


def lock_stage(run: RunFolder, check: Callable[[], tuple[dict, list[str]]]) -> tuple[dict, list[str]]:
    """The one way a stage opens its run: lock it, ``check`` its state, hand every process the result.

    ``check`` (main process only) refuses what may not go on (drift: ``cascade_booth.drift``) and
    returns the ``run.json`` the stage will write once training starts, with notes for the user.
    Under a launcher the main process alone locks and checks; the others get its answer.
    """
    def lock_and_check() -> tuple[dict, list[str]]:
        run.lock()  # first: a run in use is "in use", whatever it holds
        try:
            return check()
        except BaseException:
            run.unlock()
            raise

    return parallel.broadcast(parallel.main_first(lock_and_check, lambda: None))


def _check_state(req: TrainRequest, stage: str, tok, run: RunFolder, images: list) -> tuple[dict, list[str]]:
    recorded, notes = run.read() if run.exists() else None, []
    folder = run.stage_dir(stage)
    if recorded is None and folder.exists() and any(folder.iterdir()):  # not ours: never written into, or cleared
        raise RunError(f"{run.path} holds {folder} but is not a cascade-booth run (no run.json): choose another "
                       "--run folder")
    if recorded is not None and not req.force:
        held = stage_progress(run, recorded, stage)
        if held is None and not req.resume:  # left by a command that stopped before its first checkpoint
            notes.append(f"{run.meta_file} is left from a train-base that stopped before saving anything; "
                         "starting this run over")
            recorded = None
        elif not req.resume:
            what = "finished stage one" if held == "finished" else f"stage-one {held}"
            raise RunError(f"{run.path} already holds a run with {what}: pass --resume to continue it, "
                           "--force to start over, or choose another --run folder")
    identifier = pick_identifier(req, tok, recorded)
    fresh = {
        "subject": str(Path(req.subject).resolve()), "subject_files": subject_fingerprint(images),
        "class_noun": req.class_noun.strip(), "identifier": identifier, "seed": req.config.seed,
        "instance_prompt": instance_prompt(identifier, req.class_noun.strip()),
        "class_prompt": class_prompt(instance_template(req.class_noun.strip())),
        "models": {"base": req.config.model.base, "sr": req.config.model.sr},
        "config": req.config.to_dict(), "versions": versions(),
    }
    if recorded is not None and req.resume:
        check_resume(recorded, fresh, stage, req.allow_drift, (checkpoint_steps(run.checkpoint_root(stage)) or [0])[-1])
        meta = recorded | {"versions": fresh["versions"], "config": fresh["config"]}  # what this run now uses
    else:
        meta = fresh | {"stages": {}}
    return meta, notes
