"""Issue 12: what the pretrained world stage one gets wrong when told every attribute, and where it comes from.

    python tools/world_brightness_probe.py confusion --renders build/world-acceptance/stage_one_32px
    python tools/world_brightness_probe.py x0 [--prompts 48]
    python tools/world_brightness_probe.py starts [--prompts 48] [--guidance 4] [--cases noise,truth-mean,truth]
    python tools/world_brightness_probe.py samplers [--prompts 48] [--cases ddpm:25:leading,dpm++:25:linspace,...]

The prompts are ``world_acceptance.cascade_prompts`` (the acceptance's held-out prompts, naming class, colour,
pattern and a non-plain context); the ground truth of a prompt is the first pretraining design with its class,
colour and pattern, drawn in its context at 32 px (as ``world_acceptance --preview`` draws it). Read back by the
world attribute net.

``confusion``: the acceptance renders (``world_acceptance --cascade --work W``: ``W/stage_one_32px``) against
their prompts: which value is read instead of which, and the accuracy per asked value.
``x0``: the frozen UNet's x0 prediction from the ground truth noised to t (one step, no sampling), its mean
error per channel: is the model biased at some noise level?
``starts``: sample the prompts (the preset's DDPM sampler, 25 steps) from pure noise, from the ground truth's
per-channel mean noised to the first step, or from the ground truth noised to it: how much of what goes wrong is
decided by the start. ``samplers``: the same from pure noise with other samplers, steps and timestep spacings.
Every case prints the read-back and the renders' mean pixel value beside the ground truth's.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from world_acceptance import SHIPPED, cascade_prompts, read_pngs, truth_image  # a sibling: first on sys.path

ATTRIBUTES = ("class", "colour", "context")


def ground_truth(rows: list[dict]) -> torch.Tensor:
    """Each prompt's ground truth at 32 px, in [-1, 1]."""
    from cascade_booth.images import to_tensor

    return torch.stack([to_tensor(truth_image(r, 32), 32) for r in rows])


def report(name: str, images: torch.Tensor, rows: list[dict]) -> None:
    import cascade_booth.world.evaluators as ev

    reads = ev.load_attributes(SHIPPED / "attributes").read(images.clamp(-1, 1))
    acc = {k: round(float(np.mean([r[k] == row[k] for r, row in zip(reads, rows, strict=True)])), 3)
           for k in ATTRIBUTES}
    print(f"{name}: {acc}, mean pixel {images.clamp(-1, 1).mean().item():+.3f}", flush=True)


def confusion(renders: Path) -> None:
    import cascade_booth.world.evaluators as ev

    paths = sorted(renders.glob("p*.png"))
    rows = cascade_prompts(len(paths))
    images = read_pngs(paths)
    reads = ev.load_attributes(SHIPPED / "attributes").read(images)
    for key in ATTRIBUTES:
        wrong = Counter((row[key], r[key]) for r, row in zip(reads, rows, strict=True) if r[key] != row[key])
        per: dict[str, list[bool]] = {}
        for r, row in zip(reads, rows, strict=True):
            per.setdefault(row[key], []).append(r[key] == row[key])
        print(f"{key}: asked -> read instead (count): " + ", ".join(f"{a} -> {b} ({n})" for (a, b), n in
                                                                     wrong.most_common(8)))
        print("  read as asked, per asked value: " + ", ".join(f"{v} {np.mean(ok):.0%} of {len(ok)}"
                                                              for v, ok in sorted(per.items())))
    print(f"mean pixel: renders {images.mean().item():+.3f}, ground truth {ground_truth(rows).mean().item():+.3f}")


def _stage_one(prompts: list[str]):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from cascade_booth.models import cache_dir
    from cascade_booth.text import TextEmbeddings

    path = SHIPPED / "base"
    unet = UNet2DConditionModel.from_pretrained(path / "unet").float().eval()
    texts = TextEmbeddings(path, cache_dir())
    texts.ensure(prompts + [""])
    return unet, DDPMScheduler.load_config(path / "scheduler"), texts.stack(prompts), texts.stack([""] * len(prompts))


@torch.no_grad()
def x0_bias(n: int) -> None:
    from diffusers import DDPMScheduler

    rows = cascade_prompts(200)[:n]
    truth = ground_truth(rows)
    unet, config, text, _ = _stage_one([r["prompt"] for r in rows])
    sched = DDPMScheduler.from_config(config)
    gen = torch.Generator().manual_seed(1)
    for t in (100, 300, 500, 700, 850, 960):
        noise = torch.randn(truth.shape, generator=gen)
        steps = torch.full((n,), t)
        x_t = sched.add_noise(truth, noise, steps)
        eps = unet(x_t, steps, encoder_hidden_states=text).sample[:, :3]
        ab = sched.alphas_cumprod[t]
        x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        bias = (x0 - truth).mean(dim=(0, 2, 3)).tolist()
        print(f"t {t}: x0 mean error per channel (R, G, B) {', '.join(f'{b:+.3f}' for b in bias)}; "
              f"MSE of the clipped x0 {((x0.clamp(-1, 1) - truth) ** 2).mean().item():.4f}")


def _sample(unet, sched, x, text, neg, guidance: float, gen) -> torch.Tensor:
    from diffusers import DDPMScheduler

    from cascade_booth.sampling import _guided

    for t in sched.timesteps:
        out = _guided(unet, sched.scale_model_input(x, t), t, text, neg, guidance, None, 3)
        out = out if isinstance(sched, DDPMScheduler) else out[:, :3]  # only DDPM samples the learned variance
        x = sched.step(out, t, x, generator=gen, return_dict=False)[0]
    return x


@torch.no_grad()
def starts(n: int, guidance: float, cases: list[str]) -> None:
    from cascade_booth.sampling import make_scheduler

    rows = cascade_prompts(200)[:n]
    truth = ground_truth(rows)
    report("ground truth", truth, rows)
    unet, config, text, neg = _stage_one([r["prompt"] for r in rows])
    for case in cases:
        sched = make_scheduler(config, "learned", 25, "cpu")
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(truth.shape, generator=gen)
        first = sched.timesteps[:1]
        carried = {"noise": None, "truth-mean": truth.mean(dim=(2, 3), keepdim=True).expand_as(truth),
                   "truth": truth}[case]  # what of the ground truth the start carries
        start = noise if carried is None else sched.add_noise(carried, noise, first)
        report(f"start {case} (t {int(first)})", _sample(unet, sched, start, text, neg, guidance, gen), rows)


@torch.no_grad()
def samplers(n: int, guidance: float, cases: list[str]) -> None:
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    rows = cascade_prompts(200)[:n]
    report("ground truth", ground_truth(rows), rows)
    unet, config, text, neg = _stage_one([r["prompt"] for r in rows])
    for case in cases:
        kind, steps, spacing = case.split(":")
        kinds = {"ddpm": (DDPMScheduler, {}), "ddim": (DDIMScheduler, {}),
                 "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
                 "sde-dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"})}
        cls, extra = kinds[kind]
        sched = cls.from_config(config, timestep_spacing=spacing, **extra)
        sched.set_timesteps(int(steps))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((n, 3, 32, 32), generator=gen) * sched.init_noise_sigma
        began = time.perf_counter()
        images = _sample(unet, sched, x, text, neg, guidance, gen)
        report(f"{case} (first t {int(sched.timesteps[0])}, {time.perf_counter() - began:.0f} s)", images, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cp = sub.add_parser("confusion")
    cp.add_argument("--renders", type=Path, required=True, help="world_acceptance's WORK/stage_one_32px")
    for name in ("x0", "starts", "samplers"):
        p = sub.add_parser(name)
        p.add_argument("--prompts", type=int, default=48)
        if name != "x0":
            p.add_argument("--guidance", type=float, default=4.0)
    sub.choices["starts"].add_argument("--cases", default="noise,truth-mean,truth")
    sub.choices["samplers"].add_argument("--cases", default="ddpm:25:leading,ddpm:100:leading,dpm++:25:leading,"
                                         "dpm++:25:linspace,ddim:25:leading,sde-dpm++:25:linspace,ddpm:25:trailing")
    a = parser.parse_args(argv)
    torch.manual_seed(0)
    if a.command == "confusion":
        confusion(a.renders)
    elif a.command == "x0":
        x0_bias(a.prompts)
    else:
        {"starts": starts, "samplers": samplers}[a.command](a.prompts, a.guidance, a.cases.split(","))


if __name__ == "__main__":
    main()
