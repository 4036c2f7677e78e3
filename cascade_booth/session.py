"""Everything a stage needs before training, checked before any long work starts.

``open_run`` validates the request (class noun, subject photos, model, identifier, run folder state,
config drift on resume), locks the run folder, and returns the ``run.json`` to write: the stage
writes it once training starts (``stages.common.commit``), so a refused command changes nothing.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_booth import __version__, parallel
from cascade_booth.config import Config
from cascade_booth.errors import InputError, RunError
from cascade_booth.identifier import check_identifier, choose_identifier, class_prompt, instance_prompt
from cascade_booth.lora import LORA_WEIGHTS
from cascade_booth.runfolder import RunFolder, checkpoint_steps
from cascade_booth.text import check_training_text, load_tokenizer

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


@dataclass
class RunContext:
    request: TrainRequest
    run: RunFolder
    meta: dict[str, Any]
    images: list = field(default_factory=list)  # images.SubjectImage
    warnings: list[str] = field(default_factory=list)

    @property
    def identifier(self) -> str:
        return self.meta["identifier"]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {
        "cascade_booth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def subject_fingerprint(images: list) -> dict[str, str]:
    return {img.path.name: img.sha256 for img in images}


def load_subject(folder: Path, min_size: int) -> tuple[list, list[str]]:
    from cascade_booth.images import load_subject_images

    return load_subject_images(Path(folder), min_size)


def _identifier_rule(cfg: Config) -> dict[str, int]:
    ident = cfg.identifier
    return {"rank_min": ident.rank_min, "rank_max": ident.rank_max, "max_chars": ident.max_chars}


def check_text(req: TrainRequest, model_path: Path) -> list[str]:
    """Class noun and a given identifier against the model's tokenizer, before any work; returns warnings."""
    rule = _identifier_rule(req.config)
    return check_training_text(load_tokenizer(model_path), req.class_noun.strip(), req.identifier, rule)


def pick_identifier(req: TrainRequest, model_path: Path) -> str:
    tok, rule = load_tokenizer(model_path), _identifier_rule(req.config)
    if req.identifier is not None:  # given, even empty: checked, never silently replaced
        return check_identifier(tok, req.identifier, req.class_noun, **rule)
    return choose_identifier(tok, req.class_noun, req.config.seed, **rule)


def _drift(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _drift(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"  {prefix}{key}: {a!r} -> {b!r}")
    return out


# Settings that change how a run is operated, not what it learns: free to change on resume.
OPERATIONAL = {"checkpoint_every", "keep_checkpoints", "validation_every", "max_bad_steps"}


def _learning_settings(meta: dict[str, Any], stage: str) -> dict[str, Any]:
    # A setting added to the package after the run was recorded counts as its default, which is how
    # the run was trained: updating cascade-booth must not turn a resume into "drift".
    config, defaults = meta.get("config", {}), Config().to_dict()
    recorded = {**defaults[stage], **(config.get(stage) or {})}
    # steps may grow on resume (check_resume); a full fine-tune has no LoRA rank
    unused = OPERATIONAL | {"steps"} | ({"lora_rank"} if recorded.get("full") else set())
    stage_cfg = {k: v for k, v in recorded.items() if k not in unused}
    keys = ("seed", "identifier", "class_noun", "subject_files", "models")
    out = {k: meta.get(k) for k in keys} | {"config": stage_cfg}
    if stage == "base":  # the class images are part of stage one's training data, when the prior is on
        prior = {**defaults["prior"], **(config.get("prior") or {})}
        out["prior"] = prior if prior["enabled"] else {"enabled": False}
    return out


def check_resume(meta: dict[str, Any], fresh: dict[str, Any], stage: str, allow: bool, trained: int = 0) -> None:
    """Refuse to resume with a different seed, training config, prior, identifier or subject photos.

    ``steps`` may be raised: the learning-rate schedule (warmup, then constant) does not depend on it,
    so a run resumed to more steps equals one trained that long from the start. It may not fall below
    ``trained``, the newest checkpoint's step: no flag can take those steps back.
    """
    steps = {**Config().to_dict()[stage], **((fresh.get("config") or {}).get(stage) or {})}["steps"]
    if steps < trained:
        raise RunError(f"--resume --steps {steps}: this run is already trained to step {trained}; "
                       f"pass --steps {trained} or more")
    diff = _drift(_learning_settings(meta, stage), _learning_settings(fresh, stage))
    if diff and not allow:
        raise RunError(
            "--resume with settings that differ from the run's:\n" + "\n".join(diff)
            + "\nResume with the original settings, or pass --allow-drift to continue anyway."
        )


def open_run(req: TrainRequest, stage: str, model_path: Path, min_size: int) -> RunContext:
    """Validate the request for ``stage`` and return a locked run with the ``run.json`` to record.

    Under a launcher every process validates (read-only, same result); the main process alone locks
    the folder and checks its state, and hands the others its ``run.json``.
    """
    if not req.class_noun or not req.class_noun.strip():
        raise InputError("--class-noun is empty: name the subject's class, e.g. 'clock' or 'dog'")
    images, warnings = load_subject(req.subject, min_size)
    warnings += check_text(req, model_path)
    warnings += [f"{img.path.name}: {min(img.image.size)} px is below stage two's {SR_RESOLUTION} px; "
                 "train-sr will refuse it" for img in images if min(img.image.size) < SR_RESOLUTION]
    run = RunFolder(req.run)
    found = parallel.main_first(lambda: _lock_and_check(req, stage, model_path, run, images), lambda: None)
    meta, notes = parallel.broadcast(found)
    return RunContext(req, run, meta, images, warnings + notes)


def stage_progress(run: RunFolder, meta: dict[str, Any], stage: str) -> str | None:
    """What a run folder holds of ``stage``'s training ("finished", checkpoints, weights), None if nothing."""
    if meta.get("stages", {}).get(stage, {}).get("done"):
        return "finished"
    steps = checkpoint_steps(run.checkpoint_root(stage))
    if steps:
        return f"checkpoints up to step {steps[-1]}"
    folder = run.stage_dir(stage)
    return "weights" if (folder / LORA_WEIGHTS).exists() or (folder / "unet").exists() else None


def _lock_and_check(req: TrainRequest, stage: str, model_path: Path, run: RunFolder, images: list
                    ) -> tuple[dict, list[str]]:
    run.lock()  # first: a run in use is "in use", whatever it holds
    try:
        return _check_state(req, stage, model_path, run, images)
    except BaseException:
        run.unlock()
        raise


def _check_state(req: TrainRequest, stage: str, model_path: Path, run: RunFolder, images: list
                 ) -> tuple[dict, list[str]]:
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
    identifier = pick_identifier(req, model_path)
    fresh = {
        "subject": str(Path(req.subject).resolve()), "subject_files": subject_fingerprint(images),
        "class_noun": req.class_noun.strip(), "identifier": identifier, "seed": req.config.seed,
        "instance_prompt": instance_prompt(identifier, req.class_noun.strip()),
        "class_prompt": class_prompt(req.class_noun.strip()),
        "models": {"base": req.config.model.base, "sr": req.config.model.sr},
        "config": req.config.to_dict(), "versions": versions(),
    }
    if recorded is not None and req.resume:
        check_resume(recorded, fresh, stage, req.allow_drift, (checkpoint_steps(run.checkpoint_root(stage)) or [0])[-1])
        meta = recorded | {"versions": fresh["versions"], "config": fresh["config"]}  # what this run now uses
    else:
        meta = fresh | {"stages": {}}
    return meta, notes


def images_digest(images: list) -> str:
    return hashlib.sha256("".join(sorted(i.sha256 for i in images)).encode()).hexdigest()[:16]
