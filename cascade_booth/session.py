"""Everything a stage needs before training, checked before any long work starts.

``open_run`` validates the request (class noun, subject photos, model, identifier, run folder state,
config drift on resume), locks the run folder, and writes ``run.json``.
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
from cascade_booth.runfolder import RunFolder

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


def _tokenizer(model_path: Path):
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(model_path / "tokenizer")


def pick_identifier(req: TrainRequest, model_path: Path) -> str:
    tok = _tokenizer(model_path)
    if req.identifier:
        return check_identifier(tok, req.identifier, req.class_noun)
    ident = req.config.identifier
    return choose_identifier(tok, req.class_noun, req.config.seed, ident.rank_min, ident.rank_max, ident.max_chars)


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
    stage_cfg = {k: v for k, v in recorded.items() if k not in OPERATIONAL}
    keys = ("seed", "identifier", "class_noun", "subject_files", "models")
    out = {k: meta.get(k) for k in keys} | {"config": stage_cfg}
    if stage == "base":  # the class images are part of stage one's training data
        out["prior"] = {**defaults["prior"], **(config.get("prior") or {})}
    return out


def check_resume(meta: dict[str, Any], fresh: dict[str, Any], stage: str, allow: bool) -> None:
    """Refuse to resume with a different seed, training config, prior, identifier or subject photos."""
    diff = _drift(_learning_settings(meta, stage), _learning_settings(fresh, stage))
    if diff and not allow:
        raise RunError(
            "--resume with settings that differ from the run's:\n" + "\n".join(diff)
            + "\nResume with the original settings, or pass --allow-drift to continue anyway."
        )


def open_run(req: TrainRequest, stage: str, model_path: Path, min_size: int) -> RunContext:
    """Validate the request for ``stage`` and return a locked, recorded run.

    Under a launcher every process validates (read-only, same result); the main process alone locks
    the folder and writes ``run.json``, and the others read it once written.
    """
    if not req.class_noun or not req.class_noun.strip():
        raise InputError("--class-noun is empty: name the subject's class, e.g. 'clock' or 'dog'")
    images, warnings = load_subject(req.subject, min_size)
    warnings += [f"{img.path.name}: {min(img.image.size)} px is below stage two's {SR_RESOLUTION} px; "
                 "train-sr will refuse it" for img in images if min(img.image.size) < SR_RESOLUTION]
    run = RunFolder(req.run)
    meta = parallel.main_first(lambda: _lock_and_record(req, stage, model_path, run, images), run.read)
    return RunContext(req, run, meta, images, warnings)


def _lock_and_record(req: TrainRequest, stage: str, model_path: Path, run: RunFolder, images: list) -> dict:
    if run.exists() and stage == "base":
        meta = run.read()
        done = meta.get("stages", {}).get(stage, {}).get("done")
        if not req.resume and not req.force:
            what = "finished stage one" if done else "stage-one checkpoints"
            raise RunError(f"{run.path} already holds a run with {what}: pass --resume to continue it, "
                           "--force to start over, or choose another --run folder")
    identifier = pick_identifier(req, model_path)
    run.lock()
    fresh = {
        "subject": str(Path(req.subject).resolve()), "subject_files": subject_fingerprint(images),
        "class_noun": req.class_noun.strip(), "identifier": identifier, "seed": req.config.seed,
        "instance_prompt": instance_prompt(identifier, req.class_noun.strip()),
        "class_prompt": class_prompt(req.class_noun.strip()),
        "models": {"base": req.config.model.base, "sr": req.config.model.sr},
        "config": req.config.to_dict(), "versions": versions(),
    }
    if run.exists() and req.resume:
        meta = run.read()
        check_resume(meta, fresh, stage, req.allow_drift)
        meta.update(versions=fresh["versions"], config=fresh["config"])  # record what this run now uses
    else:
        meta = fresh | {"stages": {}}
    run.write(meta)
    return meta


def images_digest(images: list) -> str:
    return hashlib.sha256("".join(sorted(i.sha256 for i in images)).encode()).hexdigest()[:16]
