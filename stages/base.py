"""Stage one: fine-tune the 64 px text-to-image model with prior preservation (paper section 3.3).

Instance prompt "a [V] <class noun>" on the subject photos; class prompt "a <class noun>" (and, with
``[prior] contexts``, "a <class noun> <context>") on class images the frozen model generated from it.
Each batch holds ``batch_size`` of each; the loss is the instance mean plus ``prior.weight`` times the
class mean (``losses.prior_weighted_mean``). With ``identifier.offset_lr`` > 0 the instance prompt's
states also carry a learned offset at [V]'s tokens (``cascade_booth.identifier_offset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cascade_booth import parallel
from cascade_booth.devices import device
from cascade_booth.diffusion import training_losses
from cascade_booth.identifier import instance_template
from cascade_booth.identifier_offset import KEEP_NORM, OFFSET_NAME, IdentifierOffset, identifier_mask
from cascade_booth.images import open_rgb
from cascade_booth.models import cache_dir, resolve_model
from cascade_booth.prior import class_prompts, prior_images
from cascade_booth.safeload import pickles
from cascade_booth.session import RunContext, TrainRequest, open_run
from cascade_booth.text import TextEmbeddings, load_tokenizer
from cascade_booth.trainer import Batch, Callbacks, Extra, derive_seed, train
from cascade_booth.writable import check_cache, check_writable
from stages.common import EpochOrder, PreparedStage, load_unet, stack_images, train_prepared

NAME = "base"


@dataclass
class BaseJob:
    """Deterministic instance (+ class) batches and per-sample losses for stage one."""

    unet: torch.nn.Module
    params: list[torch.nn.Parameter]
    scheduler: object
    instance: torch.Tensor  # [n, 3, 64, 64]
    instance_text: torch.Tensor  # [77, d]
    class_images: torch.Tensor | None  # [m, 3, 64, 64]
    class_text: torch.Tensor | None  # [m, 77, d]: each class image's prompt ([prior] contexts)
    batch_size: int
    prior_weight: float
    variance: str
    seed: int
    x0_weight_cap: float = 1.0
    offset_noise: float = 0.0
    name: str = NAME
    offset: IdentifierOffset | None = None  # identifier.offset_lr > 0: added at [V]'s tokens (identifier_mask)
    identifier_mask: torch.Tensor | None = None  # [77] bool
    extras: dict[str, Extra] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._inst_order = EpochOrder(len(self.instance), derive_seed(self.seed, "instance-order"))
        n_class = 0 if self.class_images is None else len(self.class_images)
        self._class_order = EpochOrder(max(n_class, 1), derive_seed(self.seed, "class-order"))

    def batch(self, index: int, generator: torch.Generator) -> Batch:
        idx = self._inst_order.take(index * self.batch_size, self.batch_size)
        text_i = self.instance_text if self.offset is None else self.offset(self.instance_text, self.identifier_mask)
        x0, text = [self.instance[idx]], [text_i.expand(len(idx), -1, -1)]
        is_prior = [torch.zeros(len(idx), dtype=torch.bool)]
        if self.class_images is not None:
            cidx = self._class_order.take(index * self.batch_size, self.batch_size)
            x0.append(self.class_images[cidx])
            text.append(self.class_text[cidx])
            is_prior.append(torch.ones(len(cidx), dtype=torch.bool))
        return Batch(torch.cat(x0), torch.cat(text), torch.cat(is_prior))

    def losses(self, unet, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        dev = next(unet.parameters()).device
        return training_losses(unet, self.scheduler, batch.x0.to(dev), batch.text.to(dev), generator, self.variance,
                               x0_weight_cap=self.x0_weight_cap, offset_noise=self.offset_noise)


def prepare(req: TrainRequest, progress=None) -> PreparedStage:
    """Validate, then build class images, embeddings and the UNet for stage one.

    The caller owns the lock: ``ctx.run.unlock()`` when done (``run`` does).
    """
    from diffusers import UNet2DConditionModel

    cfg = req.config
    parallel.init()  # under a launcher: join the process group before the run folder is touched
    check_writable(req.run, "--run")
    check_cache()
    model_path = resolve_model(cfg.model.base, stage=1)
    resolution = UNet2DConditionModel.load_config(model_path / "unet")["sample_size"]
    ctx = open_run(req, NAME, model_path, min_size=resolution)
    try:
        return PreparedStage(ctx, _build_job(req, ctx, model_path, resolution, progress), cfg)
    except BaseException:
        ctx.run.unlock()  # an in-process caller (UI, tests) may retry on the same folder
        raise


def _build_job(req: TrainRequest, ctx: RunContext, model_path: Path, resolution: int, progress) -> BaseJob:
    from diffusers import DDPMScheduler

    cfg = req.config
    dev = device()
    texts = TextEmbeddings(model_path, cache_dir())
    prompts = [ctx.meta["instance_prompt"], ""] + class_prompts(ctx.meta["class_prompt"], cfg.prior.contexts)
    texts.ensure(prompts, device=dev)  # one load of the text encoder for every prompt stage one reads
    class_tensor = class_text = None
    if cfg.prior.enabled:
        prior = prior_images(model_path, ctx.meta["class_prompt"], cfg.prior, cfg.seed, cache_dir(), texts,
                             dev, progress, resolution=resolution)
        class_tensor = stack_images([open_rgb(path) for path, _ in prior], resolution)
        class_text = texts.stack([prompt for _, prompt in prior])
    unet, params = load_unet(model_path, cfg.base, dev, cfg.seed)
    instance_text = texts.get(ctx.meta["instance_prompt"])
    offset = mask = None
    extras: dict[str, Extra] = {}
    if cfg.identifier.offset_lr > 0:
        offset = IdentifierOffset(instance_text.shape[-1]).to(dev)
        mask = identifier_mask(load_tokenizer(model_path), instance_template(ctx.meta["class_noun"]),
                               ctx.identifier, instance_text.shape[0])
        extras = {OFFSET_NAME: Extra(offset.offset, cfg.identifier.offset_lr)}
    return BaseJob(
        unet=unet, params=params, scheduler=DDPMScheduler.from_pretrained(model_path / "scheduler"),
        instance=stack_images([i.image for i in ctx.images], resolution),
        instance_text=instance_text, class_images=class_tensor, class_text=class_text,
        batch_size=cfg.base.batch_size, prior_weight=cfg.prior.weight if cfg.prior.enabled else 0.0,
        variance=cfg.base.variance, seed=cfg.seed, x0_weight_cap=cfg.base.x0_weight_cap,
        offset_noise=cfg.base.offset_noise,
        offset=offset, identifier_mask=mask, extras=extras,
    )


def validation_prompts(ctx: RunContext) -> list[str]:
    """The instance prompt alone and in a new context: does the subject appear, does it recontextualize."""
    return [ctx.meta["instance_prompt"], f"{ctx.meta['instance_prompt']} on the beach"]


def make_validator(ctx: RunContext, job: BaseJob, model_path: Path, cfg):
    """A ``Callbacks.on_validation`` hook writing ``RUN/base/validation/step-N.png`` (one image per prompt)."""
    from cascade_booth.pngmeta import grid
    from cascade_booth.runfolder import atomic_path
    from cascade_booth.sampling import make_scheduler, sample_base, to_pil

    texts = TextEmbeddings(model_path, cache_dir())
    prompts = validation_prompts(ctx)
    texts.ensure(prompts + [""])
    masks = None
    if job.offset is not None:  # every validation prompt starts with the instance prompt, [V] at its place
        masks = job.identifier_mask.expand(len(prompts), -1)

    def validate(unet, step: int) -> None:
        dev, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
        scheduler = make_scheduler(job.scheduler.config, job.variance, cfg.render.steps, dev)
        gen = torch.Generator().manual_seed(cfg.seed)
        was_training = unet.training
        unet.eval()
        text = texts.stack(prompts)
        with torch.no_grad():
            text = text if masks is None else job.offset(text, masks)
        images = sample_base(unet, scheduler, text.to(dev, dtype),
                             texts.stack([""] * len(prompts)).to(dev, dtype), cfg.render.guidance, gen)
        unet.train(was_training)
        with atomic_path(ctx.run.stage_dir(NAME) / "validation" / f"step-{step}.png") as tmp:
            grid([to_pil(images)]).save(tmp, format="PNG")

    return validate


def run(req: TrainRequest, callbacks: Callbacks | None = None, progress=None) -> RunContext:
    """``cascade-booth train-base``: prepare, train, save the adapter (or UNet) into ``RUN/base``."""
    with pickles(req.allow_pickle):
        stage = prepare(req, progress)
        ctx, job, cfg = stage
        callbacks = callbacks or Callbacks()
        if cfg.base.validation_every and callbacks.on_validation is None and parallel.is_main():
            callbacks.on_validation = make_validator(ctx, job, ctx.model_path, cfg)
        clear = req.force and not req.resume  # --force: the old stage one goes once training starts, not before
        extra = {"prior": cfg.prior.enabled} | ({"identifier_offset": KEEP_NORM} if job.offset is not None else {})
        train_prepared(stage, NAME, callbacks, req.resume, extra=extra, clear=clear, trainer=train)
    return ctx


__all__ = ["BaseJob", "prepare", "run"]
