"""Render diffusers' DreamBooth LoRA results on the world cascade, as their README says (``tools/bench_world.py``).

    python tools/bench_world_render.py --base-lora DIR [--sr-lora DIR | --sr-unet DIR] --identifier ID \
        --class-noun clock --out DIR [--num-images 2] [--first]   # no --base-lora: the pretrained cascade

Stage one: ``IFPipeline`` + ``load_lora_weights`` + the scheduler switched to ``fixed_small`` variance (diffusers'
README for IF: their scripts train epsilon only). Stage two: the world SR with the LoRA when given, else the
pretrained SR with the identifier removed from its prompt (their README's tip for subjects whose detail the
upscaler already knows). Stage two samples as ``IFImg2ImgSuperResolutionPipeline`` from the bilinear upsample,
which is what cascade-booth's world preset does (``render.sr_start = "input"``). Steps, guidances, stage two's
strength and noise level are read from ``configs/world.toml`` (``[render]``, ``[sr] noise_level``), so both tools
are sampled alike. (Until 2026-12-06 this script sampled at guidance 4 and strength 1 whatever the preset said:
the preset had moved to strength 0.3 on 2026-12-05, so the 128 px diffusers rows of those days were sampled
at strength 1 and cascade-booth's at 0.3.)
Each PNG gets a JSON sidecar (prompt with ``[V]``, kind ``instance`` / ``class``) for the world read-back.
``--first``: one image of the first prompt (the "first render" time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from world_sr_fidelity import world_sr  # a sibling: ``python tools/...`` puts tools/ first on sys.path

from cascade_booth.config import load_config

MODELS = Path(__file__).resolve().parents[1] / "cascade_booth" / "world" / "models"


def prompts(class_noun: str, first: bool) -> list[tuple[str, str]]:
    from cascade_booth.world.readback import instance_prompts

    inst = instance_prompts(class_noun)
    pairs = [(p, "instance") for p in inst] + [(p.replace("[V] ", ""), "class") for p in inst]
    return pairs[:1] if first else pairs


def main() -> None:
    from diffusers import IFPipeline

    p = argparse.ArgumentParser()
    p.add_argument("--base-lora", type=Path, help="stage one's LoRA folder (none: the pretrained cascade)")
    p.add_argument("--sr-lora", type=Path)
    p.add_argument("--sr-unet", type=Path, help="a fully fine-tuned stage-two UNet folder (their train_dreambooth.py)")
    p.add_argument("--identifier", required=True)
    p.add_argument("--class-noun", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--first", action="store_true")
    p.add_argument("--no-sr", dest="sr", action="store_false", help="stage one only: save the 32 px images")
    p.add_argument("--guidance", type=float, help="stage one's guidance (default: the world preset's)")
    a = p.parse_args()
    preset = load_config("world")
    steps, sr_steps, sr_guidance = preset.render.steps, preset.render.sr_steps, preset.render.sr_guidance
    guidance = preset.render.guidance if a.guidance is None else a.guidance
    base = IFPipeline.from_pretrained(MODELS / "base")
    if a.base_lora:
        base.load_lora_weights(str(a.base_lora), weight_name="pytorch_lora_weights.safetensors")
    base.scheduler = base.scheduler.__class__.from_config(base.scheduler.config, variance_type="fixed_small")
    sr = world_sr(unet=a.sr_unet, lora=a.sr_lora)
    for pipe in (base, sr):
        pipe.set_progress_bar_config(disable=True)
    out = a.out / "personalized"
    out.mkdir(parents=True, exist_ok=True)
    for i, (template, kind) in enumerate(prompts(a.class_noun, a.first)):
        prompt = template.replace("[V]", a.identifier)
        sr_prompt = prompt if a.sr_lora or a.sr_unet else template.replace("[V] ", "")
        for k in range(1 if a.first else a.num_images):
            g = torch.Generator().manual_seed(1000 * i + k)
            low = base(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=g,
                       output_type="pt").images
            if a.sr:
                up = F.interpolate(low, (128, 128), mode="bilinear", align_corners=True)
                image = sr(image=low, original_image=up, strength=preset.render.sr_strength, prompt=sr_prompt,
                           num_inference_steps=sr_steps, guidance_scale=sr_guidance, noise_level=preset.sr.noise_level,
                           generator=g).images[0]
            else:
                image = base.numpy_to_pil(((low + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).float().numpy())[0]
            name = out / f"p{i:03d}-{k:02d}.png"
            image.save(name)
            name.with_suffix(".json").write_text(json.dumps({"prompt": template, "kind": kind}), encoding="utf-8")
            print(f"rendered {name}", flush=True)


if __name__ == "__main__":
    main()
