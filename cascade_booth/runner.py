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
from pathlib import Path

import click
import torch

from cascade_booth.condcache import cache_text_conditioning
from cascade_booth.errors import RunError
from cascade_booth.identifier_offset import load_offset, shift_states
from cascade_booth.models import cache_dir
from cascade_booth.pngmeta import render_meta, write_renders
from cascade_booth.renderplan import Plan, RenderRequest, StagePlan, plan_render, read_prompts
from cascade_booth.safeload import load_pretrained, load_state_dict
from cascade_booth.sampling import make_scheduler, sample_base, sample_sr, to_pil
from cascade_booth.session import device as default_device
from cascade_booth.text import TextEmbeddings


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


def _identifier_shift(plan: Plan, stage: StagePlan) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """(T5 states of prompt i, i) -> the states the stage sees: with stage one's learned identifier offset
    applied at [V]'s tokens as in training (``shift_states``), else as they are."""
    if stage.offset is None or plan.identifier_masks is None:
        return lambda states, i: states
    offset, masks = load_offset(stage.offset), plan.identifier_masks
    return lambda states, i: shift_states(states, masks[i], offset.to(states.dtype), stage.offset_keeps_norm)


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
        shift = _identifier_shift(plan, stage)
        done = []
        for i, prompt in enumerate(plan.prompts):
            parts = []
            for start in range(0, plan.num_images, batch_size):
                g = gens[i][start:start + batch_size]
                text = shift(texts.stack([prompt] * len(g)), i).to(device, dtype)
                neg = texts.stack([""] * len(g)).to(device, dtype)
                if noising is None:
                    parts.append(sample_base(unet, _scheduler(stage, device), text, neg, stage.guidance, g))
                else:
                    low = images[i][start:start + len(g)].to(device, dtype)
                    parts.append(sample_sr(unet, _scheduler(stage, device), noising, low, text, neg,
                                           stage.noise_level, stage.guidance, g, start=stage.start,
                                           strength=stage.strength))
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
    device = default_device()
    texts = TextEmbeddings(plan.text_model, cache_dir())
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
