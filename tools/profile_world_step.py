"""Where a stage-one step's time goes on the world UNet (issue 14): our trainer's step against a
diffusers-style step on the very same UNet, LoRA and batches.

    python tools/profile_world_step.py --subject build/bench-world/subject --steps 60

Prepares stage one exactly as ``train-base --config world`` does (class images from the cache, or made),
then times, interleaved in rounds so that a neighbour's load falls on every variant alike:

- ``cascade-booth``: the trainer's step (``trainer._Run.step``: batch, per-sample learned-variance loss,
  prior-weighted mean, accelerate backward, clip, AdamW, schedule);
- ``no text cache``: the same with the UNet's text-branch cache off (``condcache``);
- ``diffusers-style``: the loop of diffusers' ``train_dreambooth_lora.py`` on the same batches: epsilon
  MSE on the first 3 output channels, instance and prior halves averaged, backward, clip, AdamW.

Prints seconds per step (median of the rounds) and, with ``--profile``, the top operators of each variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cascade_booth.condcache import cache_text_conditioning, uncache_text_conditioning
from cascade_booth.config import load_config
from cascade_booth.session import TrainRequest
from cascade_booth.trainer import Callbacks, _Run
from stages import base


def diffusers_style_step(job, opt, batch, gen: torch.Generator) -> None:
    """diffusers' DreamBooth LoRA loop for IF: epsilon loss only, prior half weighted 1."""
    x0, text = batch.x0, batch.text
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, job.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    noisy = job.scheduler.add_noise(x0, noise, t)
    pred = job.unet(noisy, t, encoder_hidden_states=text, return_dict=False)[0]
    pred, _ = pred.chunk(2, dim=1)
    inst, prior = pred.chunk(2), noise.chunk(2)
    loss = F.mse_loss(inst[0], prior[0]) + F.mse_loss(inst[1], prior[1])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(job.params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subject", type=Path, required=True)
    p.add_argument("--class-noun", default=None, help="default: the subject.json's class")
    p.add_argument("--steps", type=int, default=60, help="steps per variant, in rounds of 10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    noun = a.class_noun or json.loads((a.subject / "subject.json").read_text())["class"]
    with tempfile.TemporaryDirectory() as tmp:
        req = TrainRequest(subject=a.subject, class_noun=noun, run=Path(tmp) / "run", config=load_config("world"))
        ctx, job, cfg = base.prepare(req)
        run = _Run(job, cfg.base, Path(tmp) / "ckpt", cfg.seed, Callbacks())
        opt = torch.optim.AdamW(job.params, lr=cfg.base.lr)
        gen = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {"cascade-booth": [], "no text cache": [], "diffusers-style": []}
        step = 0

        def variant(name: str) -> None:
            nonlocal step
            (uncache_text_conditioning if name == "no text cache" else cache_text_conditioning)(job.unet)
            t0 = time.perf_counter()
            for _ in range(10):
                if name == "diffusers-style":
                    diffusers_style_step(job, opt, job.batch(step, gen), gen)
                else:
                    run.step(step)
                step += 1
            times[name].append((time.perf_counter() - t0) / 10)

        for name in times:  # warm-up round, not counted
            variant(name)
            times[name].clear()
        for _ in range(max(1, a.steps // 10)):
            for name in times:
                variant(name)
        for name, values in times.items():
            rounds = ", ".join(f"{v:.3f}" for v in values)
            print(f"{name:16s} {statistics.median(values):.3f} s/step (rounds: {rounds})")
        if a.profile:
            for name in times:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    variant(name)
                print(f"--- {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        ctx.run.unlock()


if __name__ == "__main__":
    main()
