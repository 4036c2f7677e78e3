"""``cascade-booth render``: sample prompts with ``[V]`` through the personalized cascade.

Stage one (the fine-tuned 64 px model, Ruiz et al. 2022 section 3.2) draws the subject, stage two
(the fine-tuned SR model, section 3 / Fig. 3b) upsamples it with the conditioning it was trained on
(``diffusion.sr_condition`` at the recorded noise level), and the optional stage III is the
off-the-shelf x4 upscaler (not fine-tuned, as in the paper's Imagen cascade).

Everything is checked before any model loads. Each stage's scheduler comes from its model with the
run's recorded ``variance`` (``sampling.make_scheduler``): nobody patches a scheduler by hand. Image
``j`` of every prompt starts from seed ``seed + j`` on its own generator, so a prompt list gives
fixed-noise variations that differ only by their prompt.

Without a finished stage two, ``sr=True`` falls back to the run's un-personalized SR model (no
adapter) and says so in a warning; an SR adapter trained for a different stage one is an error.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from cascade_booth.condcache import cache_text_conditioning
from cascade_booth.config import Config, from_dict
from cascade_booth.errors import InputError, RunError
from cascade_booth.evaluation.prompts import class_prompt
from cascade_booth.identifier import fill_identifier
from cascade_booth.lora import LORA_WEIGHTS
from cascade_booth.models import cache_dir, resolve_model
from cascade_booth.pngmeta import render_meta, write_renders
from cascade_booth.runfolder import RunFolder
from cascade_booth.safeload import load_pretrained, load_state_dict
from cascade_booth.sampling import make_scheduler, sample_base, sample_sr, to_pil
from cascade_booth.session import device as default_device
from cascade_booth.text import TextEmbeddings, check_prompts, load_tokenizer
from cascade_booth.writable import check_cache, check_writable

Warn = Callable[[str], None]


@dataclass
class RenderRequest:
    """What to render; None means the run's ``[render]`` config value.

    ``steps`` applies to both stages, ``guidance`` to stage one (stage two uses ``render.sr_guidance``).
    """

    run: Path
    prompts: list[str] = field(default_factory=list)
    prompts_file: Path | None = None
    out: Path | None = None
    num_images: int | None = None
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    sr: bool = True
    upscale: bool = False
    batch_size: int = 4
    warn: Warn | None = None  # default: print "warning: ..." on stderr
    class_prompts: bool = False  # also each prompt without [V], kind "class": PRES samples (paper section 4.1)


@dataclass
class StagePlan:
    """One UNet to sample with: where it comes from and how to sample it."""

    name: str  # "base" or "sr"
    model: str  # the model spec (hub id, folder, "tiny")
    model_path: Path
    weights: Path | None  # LoRA file, full UNet folder, or None (un-personalized)
    variance: str
    steps: int
    guidance: float
    noise_level: int | None = None
    variance_type: str | None = None  # the scheduler's, once sampled (learned_range or fixed_small)

    @property
    def sr(self) -> bool:
        return self.name == "sr"


@dataclass
class Plan:
    run: RunFolder
    meta: dict[str, Any]
    templates: list[str]
    prompts: list[str]
    out: Path
    num_images: int
    seed: int
    base: StagePlan
    sr: StagePlan | None
    upscaler: Path | None
    warnings: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # per prompt: "instance" ([V]) or "class"; empty: all instance


def read_prompts(req: RenderRequest) -> list[str]:
    """Prompts from the request, then from ``prompts_file`` (one a line; blank and ``#`` lines skipped)."""
    prompts = list(req.prompts)
    if req.prompts_file is not None:
        path = Path(req.prompts_file)
        if not path.is_file():
            raise InputError(f"prompts file {path} does not exist")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        from_file = [ln for ln in lines if ln and not ln.startswith("#")]
        if not from_file:
            raise InputError(f"prompts file {path} has no prompts (one prompt with [V] per line)")
        prompts += from_file
    if not prompts:
        raise InputError("no prompts: give one or more prompts with [V], e.g. 'a [V] clock in the jungle', "
                         "or --prompts-file")
    return prompts


def _stage_model(record: dict[str, Any], spec: str, stage: int) -> Path:
    recorded = Path(record.get("model_path", ""))
    return recorded if (recorded / "unet" / "config.json").is_file() else resolve_model(spec, stage)


def _weights(run: RunFolder, name: str, record: dict[str, Any]) -> Path:
    folder = run.stage_dir(name)
    path = folder / "unet" if "unet" in record.get("files", []) else folder / LORA_WEIGHTS
    if not path.exists():
        raise RunError(f"{run.path}: run.json says stage '{name}' finished but {path} is missing")
    return path


def plan_base(run: RunFolder, meta: dict[str, Any], cfg: Config, req: RenderRequest) -> StagePlan:
    from stages.sr import finished_stage_one

    record = finished_stage_one(run, meta)
    return StagePlan("base", meta["models"]["base"], _stage_model(record, meta["models"]["base"], 1),
                     _weights(run, "base", record), record.get("variance", "learned"),
                     req.steps or cfg.render.steps, cfg.render.guidance if req.guidance is None else req.guidance)


def plan_sr(run: RunFolder, meta: dict[str, Any], cfg: Config, req: RenderRequest, notes: list[str]
            ) -> StagePlan | None:
    """Stage two's plan: the run's fine-tuned SR model, or the plain SR model with a warning."""
    from stages.sr import check_sr_model

    if not req.sr:
        return None
    base, record = meta["stages"]["base"], meta.get("stages", {}).get("sr", {})
    steps, guidance = req.steps or cfg.render.sr_steps, cfg.render.sr_guidance
    if not record.get("done"):
        spec = meta["models"]["sr"]
        notes.append(f"{run.path} has no finished stage two: upsampling with the un-personalized SR model "
                        f"'{spec}' (no adapter). Train it with `cascade-booth train-sr --run {run.path}`.")
        path = resolve_model(spec, stage=2)
        check_sr_model(path, spec, int(base["resolution"]))
        return StagePlan("sr", spec, path, None, "learned", steps, guidance, cfg.sr.noise_level)
    trained_for = (record.get("base_resolution"), record.get("base_model"), record.get("identifier"))
    current = (base.get("resolution"), meta["models"]["base"], meta["identifier"])
    if trained_for != current:
        raise RunError(f"{run.path}: stage two was trained for another stage one (base resolution, model, "
                       f"identifier {trained_for} vs now {current}); retrain it with "
                       f"`cascade-booth train-sr --run {run.path}` or render with --no-sr")
    path = _stage_model(record, record["model"], 2)
    check_sr_model(path, record["model"], int(base["resolution"]))
    return StagePlan("sr", record["model"], path, _weights(run, "sr", record), record.get("variance", "learned"),
                     steps, guidance, int(record["noise_level"]))


def plan_upscaler(cfg: Config, req: RenderRequest) -> Path | None:
    """Stage III (x4 upscaler, not fine-tuned): resolved now, so a missing model fails before sampling."""
    if not req.upscale:
        return None
    if not req.sr:
        raise InputError("--upscale needs stage two's 256 px output: drop --no-sr")
    if cfg.model.upscaler in ("", "none", "tiny"):
        raise InputError("this run's config has no stage III upscaler (model.upscaler = "
                         f"'{cfg.model.upscaler}'; the tiny preset has none): drop --upscale")
    return resolve_model(cfg.model.upscaler, stage=3)


def plan_render(req: RenderRequest) -> Plan:
    """Validate the whole request (run, prompts, stages, models) without loading any weights."""
    from stages.sr import text_model_path

    run = RunFolder(req.run)
    meta = run.read()
    cfg = from_dict(Config, meta.get("config", {}), f"{run.meta_file} config")
    templates = read_prompts(req)
    prompts = [fill_identifier(t, meta["identifier"]) for t in templates]
    kinds = ["instance"] * len(templates)
    if req.class_prompts:  # one sampling pass (one load of each stage) for both kinds
        extra = list(dict.fromkeys(class_prompt(t) for t in templates))
        templates, prompts, kinds = templates + extra, prompts + extra, kinds + ["class"] * len(extra)
    num_images = cfg.render.num_images if req.num_images is None else req.num_images
    if num_images < 1 or (req.steps is not None and req.steps < 1):
        raise InputError("--num-images and --steps must be >= 1")
    notes: list[str] = []
    base = plan_base(run, meta, cfg, req)
    sr = plan_sr(run, meta, cfg, req, notes)
    upscaler = plan_upscaler(cfg, req)
    notes += check_prompts(load_tokenizer(text_model_path(meta)), templates, prompts)  # before any model loads
    out = Path(req.out) if req.out is not None else run.path / "renders"
    check_writable(out, "--out" if req.out is not None else "render folder")
    check_cache()
    return Plan(run, meta, templates, prompts, out, num_images, req.seed, base, sr, upscaler, notes, kinds)


def load_stage_unet(stage: StagePlan, device: torch.device, dtype: torch.dtype):
    """The stage's UNet with the run's adapter (peft) or fine-tuned weights, in eval mode."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_unet_state_dict_to_peft

    if stage.weights is not None and stage.weights.is_dir():
        unet = load_pretrained(UNet2DConditionModel, stage.weights)
    else:
        unet = load_pretrained(UNet2DConditionModel, stage.model_path / "unet")
        if stage.weights is not None:
            state = {k.removeprefix("unet."): v for k, v in load_state_dict(stage.weights).items()}
            try:
                unet.load_lora_adapter(convert_unet_state_dict_to_peft(state), prefix=None,
                                       adapter_name="cascade-booth")
            except (ValueError, RuntimeError, KeyError) as err:  # a readable file that is no adapter of this UNet
                raise RunError(f"{stage.weights}: not a LoRA adapter of {stage.model_path / 'unet'} "
                               f"({str(err).strip().splitlines()[0][:200]})") from None
    cache_text_conditioning(unet)  # the prompts are fixed for all denoising steps
    return unet.to(device, dtype).eval()


def _scheduler(stage: StagePlan, device: torch.device):
    from diffusers import DDPMScheduler

    config = DDPMScheduler.load_config(stage.model_path / "scheduler")
    scheduler = make_scheduler(config, stage.variance, stage.steps, device)
    stage.variance_type = scheduler.config.variance_type
    return scheduler


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sample_cascade(plan: Plan, texts: TextEmbeddings, device: torch.device, batch_size: int = 4
                   ) -> list[torch.Tensor]:
    """Images per prompt ([num_images, 3, S, S] in [-1, 1]); each stage loads, runs for all prompts, is freed."""
    from diffusers import DDPMScheduler

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gens = [[torch.Generator("cpu").manual_seed(plan.seed + j) for j in range(plan.num_images)] for _ in plan.prompts]
    images: list[torch.Tensor] = []
    for stage in [s for s in (plan.base, plan.sr) if s is not None]:
        unet = load_stage_unet(stage, device, dtype)
        noising = DDPMScheduler.from_pretrained(stage.model_path / "image_noising_scheduler") if stage.sr else None
        done = []
        for i, prompt in enumerate(plan.prompts):
            parts = []
            for start in range(0, plan.num_images, batch_size):
                g = gens[i][start:start + batch_size]
                text = texts.stack([prompt] * len(g)).to(device, dtype)
                neg = texts.stack([""] * len(g)).to(device, dtype)
                if noising is None:
                    parts.append(sample_base(unet, _scheduler(stage, device), text, neg, stage.guidance, g))
                else:
                    low = images[i][start:start + len(g)].to(device, dtype)
                    parts.append(sample_sr(unet, _scheduler(stage, device), noising, low, text, neg,
                                           stage.noise_level, stage.guidance, g))
            done.append(torch.cat(parts).float().cpu())
        images = done
        del unet, noising
        _free()
    return images


def upscale(plan: Plan, images: list[list], device: torch.device) -> list[list]:
    """Stage III: diffusers' StableDiffusionUpscalePipeline on the 256 px images (not fine-tuned)."""
    from diffusers import StableDiffusionUpscalePipeline

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with warnings.catch_warnings():  # newer diffusers call it ``dtype``; older ones know only ``torch_dtype``
        warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated", category=FutureWarning)
        pipe = load_pretrained(StableDiffusionUpscalePipeline, plan.upscaler, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for prompt, row in zip(plan.prompts, images, strict=True):
        gens = [torch.Generator("cpu").manual_seed(plan.seed + j) for j in range(len(row))]
        out.append(pipe(prompt=[prompt] * len(row), image=row, generator=gens, output_type="pil").images)
    del pipe
    _free()
    return out


def write_outputs(plan: Plan, images: list[list]) -> list[Path]:
    """PNGs with text chunks and JSON sidecars, named by prompt index, seed and image index; a grid if several."""
    metas = [[render_meta(plan, i, j, img) for j, img in enumerate(row)] for i, row in enumerate(images)]
    return write_renders(plan.out, images, metas)


def _echo_warning(message: str) -> None:
    click.secho(f"warning: {message}", fg="yellow", err=True)


def render_run(req: RenderRequest) -> list[Path]:
    """Render every prompt ``num_images`` times; returns the image paths (then ``grid.png`` if written)."""
    plan = plan_render(req)
    for message in plan.warnings:
        (req.warn or _echo_warning)(message)
    from stages.sr import text_model_path

    device = default_device()
    texts = TextEmbeddings(text_model_path(plan.meta), cache_dir())
    texts.ensure(plan.prompts + [""], device=device)
    tensors = sample_cascade(plan, texts, device, req.batch_size)
    images = [to_pil(t) for t in tensors]
    if plan.upscaler is not None:
        images = upscale(plan, images, device)
    paths = write_outputs(plan, images)
    if paths and paths[0].parent != plan.out:  # an earlier render holds these names: say where this one went
        (req.warn or _echo_warning)(f"{plan.out} already holds renders with these names, which are kept: "
                                    f"this render is in {paths[0].parent}")
    return paths


__all__ = ["Plan", "RenderRequest", "StagePlan", "plan_render", "read_prompts", "render_run", "sample_cascade"]
