"""Stage two's class prior: the frozen SR model's own upsampling of stage one's class images.

The paper (section 3.3) keeps the class prior of the low-resolution model only: stage two is fine-tuned on
the subject's pairs alone (section 3, Fig. 3b). A fully fine-tuned SR model trained on one subject then
pulls other members of the class toward it (on the world, "a clock" rendered by a personalized cascade read
brown, the subject's colour, far more often at 128 px than at 32 px). ``[sr] class_images`` adds the same
remedy to stage two: pairs (class image at stage one's resolution -> the frozen SR's output for it, sampled
as the runner samples) trained beside the subject's with the class prompt and ``[prior] weight``, so the
SR keeps doing to other class members what it did before.

The outputs live in the shared cache beside the class images, keyed by everything that determines them;
image ``i`` draws its noise from its own seed whatever it is sampled with, so a cache of 8 grows to 16
without changing the first 8, and every PNG is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cascade_booth import parallel
from cascade_booth.config import Config, PriorConfig
from cascade_booth.images import open_rgb, to_tensor
from cascade_booth.models import model_fingerprint
from cascade_booth.prior import Progress, cache_key, class_images
from cascade_booth.runfolder import atomic_path
from cascade_booth.seeds import derive_seed
from cascade_booth.text import TextEmbeddings

GROUP = 4  # images sampled together (each from its own generator)


@dataclass
class SRPriorSpec:
    """What determines stage two's class pairs (the cache key)."""

    base_model: Path
    sr_model: Path
    class_prompt: str
    base_resolution: int
    seed: int  # stage one's, with its [prior] settings: the class images are the run's own
    prior: PriorConfig


def sr_cache_key(spec: SRPriorSpec, cfg: Config) -> str:
    r = cfg.render
    fields = dict(
        class_images=cache_key(spec.base_model, spec.class_prompt, spec.base_resolution, spec.prior, spec.seed),
        sr=model_fingerprint(spec.sr_model), prompt=spec.class_prompt, steps=r.sr_steps, guidance=r.sr_guidance,
        start=r.sr_start, strength=r.sr_strength, noise_level=cfg.sr.noise_level, variance=cfg.sr.variance,
    )
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def sr_class_pairs(spec: SRPriorSpec, cfg: Config, cache_root: Path, texts: TextEmbeddings,
                   device: torch.device, progress: Progress | None = None) -> tuple[list[Path], list[Path]]:
    """``cfg.sr.class_images`` (low-resolution class image, frozen SR output) paths, generating what is missing.

    The low-resolution images are the first ``cfg.sr.class_images`` of stage one's class-image cache (found
    there, or generated as stage one would); only the main process samples, the others wait for it.
    """
    count = cfg.sr.class_images
    low = class_images(spec.base_model, spec.class_prompt, replace(spec.prior, class_images=count), spec.seed,
                       cache_root, texts, device, resolution=spec.base_resolution)
    folder = cache_root / "sr_class_images" / sr_cache_key(spec, cfg)
    high = [folder / f"{i:05d}.png" for i in range(count)]
    missing = [i for i, path in enumerate(high) if not path.exists()]
    if missing and parallel.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        _upsample(spec, cfg, low, high, missing, texts, device, progress)
    if parallel.active():
        parallel.barrier()
    return low, high


def _upsample(spec: SRPriorSpec, cfg: Config, low: list[Path], high: list[Path], missing: list[int],
              texts: TextEmbeddings, device: torch.device, progress: Progress | None) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from cascade_booth.condcache import cache_text_conditioning
    from cascade_booth.safeload import load_pretrained
    from cascade_booth.sampling import make_scheduler, sample_sr, to_pil

    unet = load_pretrained(UNet2DConditionModel, spec.sr_model / "unet").to(device).eval()
    cache_text_conditioning(unet)
    config = DDPMScheduler.load_config(spec.sr_model / "scheduler")
    noising = DDPMScheduler.from_pretrained(spec.sr_model / "image_noising_scheduler")
    texts.ensure([spec.class_prompt, ""], device=device)
    r = cfg.render
    for group in sorted({i // GROUP for i in missing}):
        indices = [i for i in range(group * GROUP, (group + 1) * GROUP) if i < len(low)]
        gen = [torch.Generator().manual_seed(derive_seed("sr-class-image", spec.seed, i)) for i in indices]
        lows = torch.stack([to_tensor(open_rgb(low[i]), spec.base_resolution) for i in indices]).to(device)
        scheduler = make_scheduler(config, cfg.sr.variance, r.sr_steps, device)
        out = sample_sr(unet, scheduler, noising, lows, texts.stack([spec.class_prompt] * len(indices)).to(device),
                        texts.stack([""] * len(indices)).to(device), cfg.sr.noise_level, r.sr_guidance, gen,
                        start=r.sr_start, strength=r.sr_strength)
        for i, image in zip(indices, to_pil(out), strict=True):
            if i in missing:
                with atomic_path(high[i]) as tmp:
                    image.save(tmp, format="PNG")
        if progress:
            progress(sum(path.exists() for path in high), len(high))
