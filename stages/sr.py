"""Stage two: fine-tune the super-resolution model (IF-II, 64 -> 256) on the subject photos.

Ruiz et al. 2022, section 3 (Fig. 3b): after the low-resolution model, the cascade's super-resolution
component is fine-tuned "with pairs of low-resolution and high-resolution images taken from our input
images set", so that the subject's fine details survive upsampling; the paper's supplement finds that a
low noise-augmentation level on the low-resolution input keeps high-frequency detail.

Each pair is: target = the photo at the SR resolution; low-resolution input = the same centre crop at
stage one's resolution (exactly what stage one trained on). The low-resolution input is upsampled and
noise-augmented by ``diffusion.sr_condition`` -- the very function the runner (``sampling.sample_sr``)
uses, which reproduces ``IFSuperResolutionPipeline.__call__`` -- and its level goes in as
``class_labels``. (diffusers' DreamBooth scripts instead concatenate the noisy target with itself and
pass the diffusion timestep as the class label, so their SR model never sees a low-resolution input in
training.) The level is ``cfg.sr.noise_level``, recorded in ``run.json`` so that rendering uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_booth import parallel
from cascade_booth.config import Config, apply_overrides, from_dict, load_config, validate
from cascade_booth.diffusion import sr_condition, training_losses
from cascade_booth.errors import InputError, ModelNotFoundError, RunError
from cascade_booth.lora import LORA_WEIGHTS
from cascade_booth.models import cache_dir, resolve_model
from cascade_booth.runfolder import RunFolder, checkpoint_steps
from cascade_booth.session import RunContext, check_resume, device, load_subject, stage_progress, subject_fingerprint
from cascade_booth.text import TextEmbeddings
from cascade_booth.trainer import Batch, Callbacks, derive_seed, train
from cascade_booth.writable import check_cache, check_writable
from stages.common import (
    EpochOrder,
    LossLog,
    before_start,
    commit,
    finish_stage,
    load_unet,
    release_space,
    stack_images,
)

NAME = "sr"


@dataclass
class SRRequest:
    """``cascade-booth train-sr``: the run folder plus optional config / model / seed changes.

    ``config`` is a preset name or TOML path, a ``Config``, or None for the config recorded in the
    run. ``overrides`` are ``[sr]`` values (None = not given) from CLI flags.
    """

    run: Path
    config: str | Path | Config | None = None
    model: str | None = None
    seed: int | None = None
    resume: bool = False
    allow_drift: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class SRJob:
    """Deterministic (high-res target, low-res input) batches and per-sample losses for stage two."""

    unet: torch.nn.Module
    params: list[torch.nn.Parameter]
    scheduler: object
    noising_scheduler: object
    targets: torch.Tensor  # [n, 3, S, S] in [-1, 1]
    low_res: torch.Tensor  # [n, 3, s, s]: the same crops at stage one's resolution
    text: torch.Tensor  # [77, d]
    batch_size: int
    noise_level: int
    variance: str
    seed: int
    prior_weight: float = 0.0
    name: str = NAME

    def __post_init__(self) -> None:
        self._order = EpochOrder(len(self.targets), derive_seed(self.seed, "sr-order"))

    def batch(self, index: int, generator: torch.Generator) -> Batch:
        idx = self._order.take(index * self.batch_size, self.batch_size)
        is_prior = torch.zeros(len(idx), dtype=torch.bool)
        return Batch(self.targets[idx], self.text.expand(len(idx), -1, -1), is_prior, self.low_res[idx])

    def losses(self, unet, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """Conditioning first (as the sampler draws it after its initial noise), then t and noise."""
        dev = next(unet.parameters()).device
        x0 = batch.x0.to(dev)
        cond, labels = sr_condition(batch.low_res.to(dev), x0.shape[-1], self.noise_level, self.noising_scheduler,
                                    generator)
        return training_losses(unet, self.scheduler, x0, batch.text.to(dev), generator, self.variance,
                               cond=cond, class_labels=labels)


def resolve_config(req: SRRequest, meta: dict[str, Any]) -> Config:
    """The run's recorded config (or ``req.config``), with --model, --seed and ``[sr]`` overrides."""
    if req.config is None:
        if "config" not in meta:
            raise RunError(f"{req.run}: run.json records no config; pass --config")
        cfg = validate(from_dict(Config, meta["config"], f"{req.run}/run.json config"), "run.json config")
    elif isinstance(req.config, Config):
        cfg = copy.deepcopy(req.config)
    else:
        cfg = load_config(req.config)
    if req.model is not None:
        cfg.model.sr = req.model
    apply_overrides(cfg, "", seed=req.seed)
    return apply_overrides(cfg, "sr", **req.overrides)


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


def _subject_drift(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    lines = [f"  removed: {n}" for n in sorted(set(recorded) - set(now))]
    lines += [f"  added: {n}" for n in sorted(set(now) - set(recorded))]
    lines += [f"  changed: {n}" for n in sorted(set(now) & set(recorded)) if now[n] != recorded[n]]
    return lines


def load_pairs(meta: dict[str, Any], base_res: int, sr_res: int, allow_drift: bool) -> tuple[list, list[str]]:
    """Re-validate the subject photos at the SR resolution and check them against run.json."""
    try:
        images, warnings = load_subject(Path(meta["subject"]), min_size=sr_res)
    except InputError as err:
        raise InputError(f"stage two trains at {sr_res} px, so every subject photo must be at least that big.\n"
                         f"{err}") from None
    drift = _subject_drift(meta.get("subject_files", {}), subject_fingerprint(images))
    if drift and not allow_drift:
        raise RunError(f"the subject photos in {meta['subject']} differ from those stage one trained on:\n"
                       + "\n".join(drift) + "\nRestore them, or pass --allow-drift to train stage two anyway.")
    if drift:
        warnings.append("subject photos differ from stage one's (--allow-drift):\n" + "\n".join(drift))
    return images, warnings


def _record(meta: dict[str, Any], cfg: Config, model_path: Path, base_res: int, sr_res: int,
            images: list) -> dict[str, Any]:
    """What run.json ``stages.sr`` keeps about this stage (read by the runner and by --resume)."""
    kind = cfg.sr.prompt
    return {
        "noise_level": cfg.sr.noise_level, "base_resolution": base_res, "sr_resolution": sr_res,
        "prompt": kind, "prompt_text": meta["instance_prompt" if kind == "instance" else "class_prompt"],
        "model": cfg.model.sr, "model_path": str(model_path), "base_model": meta["models"]["base"],
        "identifier": meta["identifier"], "seed": cfg.seed, "subject_files": subject_fingerprint(images),
        "config": dataclasses.asdict(cfg.sr),
    }


def _check_start(run: RunFolder, meta: dict[str, Any], record: dict[str, Any], req: SRRequest) -> None:
    """A fresh start must not mix with an earlier stage two; --resume must not change its settings."""
    folder = run.stage_dir(NAME)
    earlier = checkpoint_steps(run.checkpoint_root(NAME)) or (folder / LORA_WEIGHTS).exists() or (
        folder / "unet").exists()
    previous = meta.get("stages", {}).get(NAME)
    if req.resume and previous:
        def view(r: dict) -> dict:
            return {"seed": r.get("seed"), "models": {"sr": r.get("model")}, "subject_files": r.get("subject_files"),
                    "config": {NAME: r.get("config")}}

        trained = (checkpoint_steps(run.checkpoint_root(NAME)) or [0])[-1]
        check_resume(view(previous), view(record), NAME, req.allow_drift, trained)
    elif earlier and not req.resume:
        raise RunError(f"{folder} already holds stage-two checkpoints or weights: pass --resume to continue, "
                       f"or delete {folder} to train stage two from scratch")


def prepare(req: SRRequest, progress=None) -> tuple[RunContext, SRJob, Config]:
    """Validate everything, lock the run, then build the SR UNet, pairs and embeddings.

    The caller owns the lock: ``ctx.run.unlock()`` when done (``run`` does). Nothing is written:
    ``run`` records the stage in run.json once training starts.
    """
    from diffusers import DDPMScheduler

    parallel.init()  # under a launcher: join the process group before the run folder is touched
    run = RunFolder(req.run)
    meta = run.read()
    base = finished_stage_one(run, meta)
    check_writable(run.path, "--run")
    check_cache()
    cfg = resolve_config(req, meta)
    model_path = resolve_model(cfg.model.sr, stage=2)
    base_res = int(base["resolution"])
    sr_res = check_sr_model(model_path, cfg.model.sr, base_res)
    images, warnings = load_pairs(meta, base_res, sr_res, req.allow_drift)
    record = _record(meta, cfg, model_path, base_res, sr_res, images)
    parallel.main_first(run.lock, lambda: None)  # before the state checks: a run in use is "in use", whatever it holds
    try:
        _check_start(run, meta, record, req)
        meta.setdefault("stages", {})[NAME] = {"done": False, **record}
        texts = TextEmbeddings(text_model_path(meta), cache_dir())
        texts.ensure([record["prompt_text"]], device=device())
        unet, params = load_unet(model_path, cfg.sr, device(), cfg.seed)
        job = SRJob(
            unet=unet, params=params, scheduler=DDPMScheduler.from_pretrained(model_path / "scheduler"),
            noising_scheduler=DDPMScheduler.from_pretrained(model_path / "image_noising_scheduler"),
            targets=stack_images([i.image for i in images], sr_res),
            low_res=stack_images([i.image for i in images], base_res), text=texts.get(record["prompt_text"]),
            batch_size=cfg.sr.batch_size, noise_level=cfg.sr.noise_level, variance=cfg.sr.variance, seed=cfg.seed,
        )
    except BaseException:
        run.unlock()
        raise
    return RunContext(request=req, run=run, meta=meta, images=images, warnings=warnings), job, cfg


def run(req: SRRequest, callbacks: Callbacks | None = None, progress=None) -> RunContext:
    """``cascade-booth train-sr``: prepare, train, save the adapter (or UNet) into ``RUN/sr``."""
    ctx, job, cfg = prepare(req, progress)
    record = ctx.meta["stages"][NAME]
    callbacks = before_start(LossLog.attach(callbacks or Callbacks(), ctx.run.stage_dir(NAME)),
                             lambda: commit(ctx, NAME, job.unet, cfg.sr.full))
    try:
        train(job, cfg.sr, ctx.run.checkpoint_root(NAME), cfg.seed, req.resume, callbacks)
        extra = {k: v for k, v in record.items() if k not in ("done", "model_path")}
        finish_stage(ctx, NAME, job.unet, cfg.sr, Path(record["model_path"]), extra=extra)
    finally:
        release_space(ctx.run, NAME)
        ctx.run.unlock()
    ctx.meta = ctx.run.read()
    return ctx


__all__ = ["SRJob", "SRRequest", "check_sr_model", "finished_stage_one", "load_pairs", "prepare",
           "resolve_config", "run", "text_model_path"]
