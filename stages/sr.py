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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_booth import parallel
from cascade_booth.config import Config, from_dict, load_config, override
from cascade_booth.config_checks import validate
from cascade_booth.devices import device
from cascade_booth.diffusion import paired_crop, sr_condition, training_losses
from cascade_booth.drift import check_resume, stage_settings, subject_drift
from cascade_booth.errors import InputError, RunError
from cascade_booth.flags import flag_name
from cascade_booth.handoff import check_sr_model, finished_stage_one, text_model_path
from cascade_booth.images import open_rgb
from cascade_booth.lora import LORA_WEIGHTS
from cascade_booth.models import cache_dir, resolve_model
from cascade_booth.runfolder import RunFolder, checkpoint_steps
from cascade_booth.safeload import pickles
from cascade_booth.session import RunContext, load_subject, lock_stage, subject_fingerprint
from cascade_booth.sr_prior import SRPriorSpec, sr_class_pairs
from cascade_booth.text import TextEmbeddings
from cascade_booth.trainer import Batch, Callbacks, Extra, derive_seed, train
from cascade_booth.writable import check_cache, check_writable
from stages.common import EpochOrder, PreparedStage, load_unet, stack_images, train_prepared

NAME = "sr"


@dataclass
class SRRequest:
    """``cascade-booth train-sr``: the run folder plus optional config / model / seed changes.

    ``config`` is a preset name or TOML path, a ``Config``, or None for the config recorded in the
    run. The CLI hands a finished ``Config``; library callers may instead give ``model`` (stage two's),
    ``seed`` and ``overrides`` (``[sr]`` values, None = not given), applied like the flags they stand for.
    """

    run: Path
    config: str | Path | Config | None = None
    model: str | None = None
    seed: int | None = None
    resume: bool = False
    allow_drift: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False  # --allow-pickle: also load pickled weights (``safeload.pickles``)


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
    x0_weight_cap: float = 1.0
    offset_noise: float = 0.0
    # [sr] class_images (cascade_booth/sr_prior.py): class pairs, each batch takes as many as subject pairs
    class_targets: torch.Tensor | None = None  # [m, 3, S, S]: the frozen SR's outputs
    class_low_res: torch.Tensor | None = None  # [m, 3, s, s]: stage one's class images
    class_text: torch.Tensor | None = None  # [77, d]: the class prompt
    class_block: int = 1  # [sr] class_block: > 1 compares the class pairs on block means (losses.coarse_error)
    crop: int = 0  # [sr] crop: > 0 trains on one random crop x crop window of each pair (diffusion.paired_crop)
    name: str = NAME
    extras: dict[str, Extra] = field(default_factory=dict)  # stage two trains the UNet alone

    def __post_init__(self) -> None:
        self._order = EpochOrder(len(self.targets), derive_seed(self.seed, "sr-order"))
        if self.class_targets is not None:
            self._class_order = EpochOrder(len(self.class_targets), derive_seed(self.seed, "sr-class-order"))

    def batch(self, index: int, generator: torch.Generator) -> Batch:
        idx = self._order.take(index * self.batch_size, self.batch_size)
        batch = Batch(self.targets[idx], self.text.expand(len(idx), -1, -1), torch.zeros(len(idx), dtype=torch.bool),
                      self.low_res[idx])
        if self.class_targets is None:
            return batch
        cidx = self._class_order.take(index * self.batch_size, self.batch_size)
        return Batch(torch.cat([batch.x0, self.class_targets[cidx]]),
                     torch.cat([batch.text, self.class_text.expand(len(cidx), -1, -1)]),
                     torch.cat([batch.is_prior, torch.ones(len(cidx), dtype=torch.bool)]),
                     torch.cat([batch.low_res, self.class_low_res[cidx]]))

    def losses(self, unet, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """Conditioning first (as the sampler draws it after its initial noise), then t and noise."""
        dev = next(unet.parameters()).device
        x0 = batch.x0.to(dev)
        cond, labels = sr_condition(batch.low_res.to(dev), x0.shape[-1], self.noise_level, self.noising_scheduler,
                                    generator)
        if self.crop:  # after the conditioning: the window is what the UNet sees there at inference
            x0, cond = paired_crop(x0, cond, self.crop, generator)
        return training_losses(unet, self.scheduler, x0, batch.text.to(dev), generator, self.variance,
                               cond=cond, class_labels=labels, x0_weight_cap=self.x0_weight_cap,
                               offset_noise=self.offset_noise, coarse=batch.is_prior, block=self.class_block)


def _first_config(config: str | Path | Config | None, run: Path, meta: dict[str, Any]) -> Config:
    """``config`` (a preset name or TOML path, or a ``Config``, copied), or the one run.json records."""
    if isinstance(config, Config):
        return copy.deepcopy(config)
    if config is not None:
        return load_config(config)
    if "config" not in meta:
        raise RunError(f"{run}: run.json records no config; pass --config")
    return validate(from_dict(Config, meta["config"], f"{run}/run.json config"), "run.json config")


def starting_config(run_dir: Path, config: str | Path | None) -> Config:
    """What ``train-sr``'s flags override: ``--config``, or the config of the run (whose stage one must be done)."""
    run = RunFolder(run_dir)
    meta = run.read()
    finished_stage_one(run, meta)
    return _first_config(config, run.path, meta)


def resolve_config(req: SRRequest, meta: dict[str, Any]) -> Config:
    """``req.config`` (or the run's recorded one) with ``req.model``, ``req.seed`` and ``[sr]`` overrides."""
    cfg = _first_config(req.config, req.run, meta)
    values = {"model.sr": req.model, "seed": req.seed, **{f"sr.{k}": v for k, v in req.overrides.items()}}
    if all(value is None for value in values.values()):
        return cfg  # finished already (the CLI's): validated when it was made
    names = {key: flag_name(*key.rpartition(".")[::2]) for key in values}
    return override(cfg, values, names)


def load_pairs(meta: dict[str, Any], base_res: int, sr_res: int, allow_drift: bool) -> tuple[list, list[str]]:
    """Re-validate the subject photos at the SR resolution and check them against run.json."""
    try:
        images, warnings = load_subject(Path(meta["subject"]), min_size=sr_res)
    except InputError as err:
        raise InputError(f"stage two trains at {sr_res} px, so every subject photo must be at least that big.\n"
                         f"{err}") from None
    drift = subject_drift(meta.get("subject_files", {}), subject_fingerprint(images))
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
        "config": dataclasses.asdict(cfg.sr), "prior_weight": cfg.prior.weight,  # used when [sr] class_images > 0
    }


def _check_start(run: RunFolder, meta: dict[str, Any], record: dict[str, Any], req: SRRequest
                 ) -> tuple[dict[str, Any], list[str]]:
    """A fresh start must not mix with an earlier stage two; --resume must not change its settings.

    Returns the run.json to write once training starts: the run's, with this stage recorded.
    """
    folder = run.stage_dir(NAME)
    earlier = checkpoint_steps(run.checkpoint_root(NAME)) or (folder / LORA_WEIGHTS).exists() or (
        folder / "unet").exists()
    previous = meta.get("stages", {}).get(NAME)
    if req.resume and previous:
        trained = (checkpoint_steps(run.checkpoint_root(NAME)) or [0])[-1]
        check_resume(stage_settings(previous, NAME), stage_settings(record, NAME), NAME, req.allow_drift, trained)
    elif earlier and not req.resume:
        raise RunError(f"{folder} already holds stage-two checkpoints or weights: pass --resume to continue, "
                       f"or delete {folder} to train stage two from scratch")
    stages = {**meta.get("stages", {}), NAME: {"done": False, **record}}
    return meta | {"stages": stages}, []


def check_shapes(cfg: Config, sr_res: int, model_path: Path) -> None:
    """``[sr] class_block`` and ``[sr] crop`` against stage two's resolution and UNet, before any work."""
    if sr_res % cfg.sr.class_block:  # block means tile the image exactly, or the prior would skip its edges
        raise InputError(f"{flag_name('sr', 'class_block')} {cfg.sr.class_block}: must divide stage two's resolution "
                         f"{sr_res} (e.g. 8)")
    crop, name = cfg.sr.crop, flag_name("sr", "crop")
    if not crop:
        return
    unet_config = model_path / "unet" / "config.json"
    levels = len(json.loads(unet_config.read_text())["block_out_channels"]) if unet_config.is_file() else 4
    step = math.lcm(2 ** (levels - 1), cfg.sr.class_block)  # the UNet halves the window levels - 1 times
    if crop > sr_res or crop % step:
        why = "the UNet's downsampling" + (f" and {flag_name('sr', 'class_block')}" if step > 2 ** (levels - 1) else "")
        raise InputError(f"{name} {crop}: must be a multiple of {step} ({why}) and at most stage two's resolution "
                         f"{sr_res}, e.g. {max(step, sr_res // 2 // step * step)} (0: whole images)")


def prepare(req: SRRequest, progress=None) -> PreparedStage:
    """Validate everything, lock the run, then build the SR UNet, pairs and embeddings.

    The caller owns the lock: ``ctx.run.unlock()`` when done (``run`` does). Nothing is written:
    ``run`` records the stage in run.json once training starts.
    """
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
    check_shapes(cfg, sr_res, model_path)
    images, warnings = load_pairs(meta, base_res, sr_res, req.allow_drift)
    record = _record(meta, cfg, model_path, base_res, sr_res, images)
    meta, notes = lock_stage(run, lambda: _check_start(run, meta, record, req))
    ctx = RunContext(request=req, run=run, meta=meta, images=images, warnings=warnings + notes, model_path=model_path)
    try:
        return PreparedStage(ctx, _build_job(ctx, cfg, sr_res, base_res, progress), cfg)
    except BaseException:
        run.unlock()
        raise


def _class_pairs(ctx: RunContext, cfg: Config, sr_res: int, base_res: int, texts: TextEmbeddings,
                 progress) -> dict[str, Any]:
    """SRJob's class fields for ``[sr] class_images`` (none when 0): stage one's class images and the frozen SR's
    outputs for them, with the class prompt (``cascade_booth/sr_prior.py``)."""
    if cfg.sr.class_images == 0:
        return {}
    low, high = sr_class_pairs(_prior_spec(ctx, base_res), cfg, cache_dir(), texts, device(), progress)
    return dict(class_low_res=stack_images([open_rgb(p) for p in low], base_res),
                class_targets=stack_images([open_rgb(p) for p in high], sr_res),
                class_text=texts.get(ctx.meta["class_prompt"]), prior_weight=cfg.prior.weight,
                class_block=cfg.sr.class_block)


def _prior_spec(ctx: RunContext, base_res: int) -> SRPriorSpec:
    """Stage one's class images as the run made them: its model, class prompt, seed and [prior] settings."""
    recorded = from_dict(Config, ctx.meta["config"], f"{ctx.run.path}/run.json config")
    return SRPriorSpec(base_model=text_model_path(ctx.meta), sr_model=ctx.model_path,
                       class_prompt=ctx.meta["class_prompt"], base_resolution=base_res, seed=int(ctx.meta["seed"]),
                       prior=recorded.prior)


def _build_job(ctx: RunContext, cfg: Config, sr_res: int, base_res: int, progress=None) -> SRJob:
    from diffusers import DDPMScheduler

    prompt, model_path = ctx.meta["stages"][NAME]["prompt_text"], ctx.model_path
    texts = TextEmbeddings(text_model_path(ctx.meta), cache_dir())
    prior_prompts = [ctx.meta["class_prompt"], ""] if cfg.sr.class_images else []  # the frozen SR samples with these
    texts.ensure([prompt, *prior_prompts], device=device())  # one load of the text encoder for every prompt
    prior = _class_pairs(ctx, cfg, sr_res, base_res, texts, progress)
    unet, params = load_unet(model_path, cfg.sr, device(), cfg.seed)
    photos = [i.image for i in ctx.images]
    return SRJob(
        unet=unet, params=params, scheduler=DDPMScheduler.from_pretrained(model_path / "scheduler"),
        noising_scheduler=DDPMScheduler.from_pretrained(model_path / "image_noising_scheduler"),
        targets=stack_images(photos, sr_res), low_res=stack_images(photos, base_res), text=texts.get(prompt),
        batch_size=cfg.sr.batch_size, noise_level=cfg.sr.noise_level, variance=cfg.sr.variance, seed=cfg.seed,
        x0_weight_cap=cfg.sr.x0_weight_cap, offset_noise=cfg.sr.offset_noise, crop=cfg.sr.crop, **prior,
    )


def run(req: SRRequest, callbacks: Callbacks | None = None, progress=None) -> RunContext:
    """``cascade-booth train-sr``: prepare, train, save the adapter (or UNet) into ``RUN/sr``."""
    with pickles(req.allow_pickle):
        stage = prepare(req, progress)
        record = stage.ctx.meta["stages"][NAME]
        extra = {k: v for k, v in record.items() if k not in ("done", "model_path")}
        train_prepared(stage, NAME, callbacks or Callbacks(), req.resume, extra=extra, trainer=train)
    stage.ctx.meta = stage.ctx.run.read()
    return stage.ctx


__all__ = ["SRJob", "SRRequest", "load_pairs", "prepare", "resolve_config", "run", "starting_config"]
