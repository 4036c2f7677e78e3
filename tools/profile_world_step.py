"""Where a training step's time goes on the world UNets (issue 14): our trainer's step against a
diffusers-style step on the very same UNet, LoRA and batches.

    python tools/profile_world_step.py --subject build/bench-world/subject --steps 60
    python tools/profile_world_step.py --stage-two build/bench-world/cascade-booth/run --steps 60

Prepares stage one exactly as ``train-base --config world`` does (class images from the cache, or made),
then times, interleaved in rounds so that a neighbour's load falls on every variant alike:

- ``cascade-booth``: the trainer's step (``trainer._Run.step``: batch, per-sample learned-variance loss,
  prior-weighted mean, accelerate backward, clip, AdamW, schedule);
- ``no text cache``: the same with the UNet's text-branch cache off (``condcache``);
- ``diffusers-style``: the loop of diffusers' ``train_dreambooth_lora.py`` on the same batches: epsilon
  MSE on the first 3 output channels, instance and prior halves averaged, backward, clip, AdamW.

``--stage-two RUN`` does the same for ``train-sr --config world`` on a copy of RUN (stage one done), where
the diffusers-style step is their ``--class_labels_conditioning timesteps`` loop: the noisy target
concatenated with itself, the timesteps as class labels, no prior half.

Prints seconds per step (median of the rounds) and, with ``--profile``, the top operators of each variant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cascade_booth.condcache import cache_text_conditioning, uncache_text_conditioning
from cascade_booth.config import apply_overrides, load_config
from cascade_booth.session import TrainRequest
from cascade_booth.trainer import Callbacks, _Run
from stages import base, sr


def _noised(job, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise, t, noisy x0) drawn the way diffusers' loop draws them."""
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, job.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    return noise, t, job.scheduler.add_noise(x0, noise, t)


def diffusers_style_step(job, opt, batch, gen: torch.Generator) -> None:
    """diffusers' DreamBooth LoRA loop for IF: epsilon loss only, prior half weighted 1."""
    noise, t, noisy = _noised(job, batch.x0, gen)
    pred = job.unet(noisy, t, encoder_hidden_states=batch.text, return_dict=False)[0]
    pred, _ = pred.chunk(2, dim=1)
    inst, prior = pred.chunk(2), noise.chunk(2)
    loss = F.mse_loss(inst[0], prior[0]) + F.mse_loss(inst[1], prior[1])
    _update(job, opt, loss)


def diffusers_style_sr_step(job, opt, batch, gen: torch.Generator) -> None:
    """diffusers' DreamBooth loop for IF stage II: the noisy target twice along channels, t as class labels."""
    noise, t, noisy = _noised(job, batch.x0, gen)
    pred = job.unet(torch.cat([noisy, noisy], dim=1), t, encoder_hidden_states=batch.text, class_labels=t,
                    return_dict=False)[0]
    _update(job, opt, F.mse_loss(pred.chunk(2, dim=1)[0], noise))


def _update(job, opt, loss: torch.Tensor) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(job.params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def prepare(a: argparse.Namespace, tmp: Path):
    """(stage, job, its config, the diffusers-style step) as ``train-base`` / ``train-sr --config world`` build them."""
    if a.stage_two:
        run = tmp / "run"
        # without its stage-two folder the copy trains stage two afresh (run.json's record matters on --resume only)
        shutil.copytree(a.stage_two, run, ignore=shutil.ignore_patterns("sr", ".lock"))
        stage = sr.prepare(sr.SRRequest(run=run, config="world", overrides={"mixed_precision": a.mixed_precision}))
        return stage, stage.config.sr, diffusers_style_sr_step
    noun = a.class_noun or json.loads((a.subject / "subject.json").read_text())["class"]
    cfg = apply_overrides(load_config("world"), "base", mixed_precision=a.mixed_precision)
    stage = base.prepare(TrainRequest(subject=a.subject, class_noun=noun, run=tmp / "run", config=cfg))
    return stage, stage.config.base, diffusers_style_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subject", type=Path, help="stage one: a world subject folder")
    p.add_argument("--stage-two", type=Path, metavar="RUN", help="stage two, on a copy of this run (stage one done)")
    p.add_argument("--class-noun", default=None, help="default: the subject.json's class")
    p.add_argument("--steps", type=int, default=60, help="steps per variant, in rounds of 10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "auto"],
                   help="the trainer's precision (default: the world preset's); the diffusers-style step then runs "
                        "under the same autocast")
    a = p.parse_args()
    if (a.subject is None) == (a.stage_two is None):
        p.error("give --subject (stage one) or --stage-two RUN")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        (ctx, job, cfg), stage_cfg, diffusers_step = prepare(a, Path(tmp))
        run = _Run(job, stage_cfg, Path(tmp) / "ckpt", cfg.seed, Callbacks())
        opt = torch.optim.AdamW(job.params, lr=stage_cfg.lr)
        gen = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {"cascade-booth": [], "no text cache": [], "diffusers-style": []}
        step = 0

        def variant(name: str) -> None:
            nonlocal step
            (uncache_text_conditioning if name == "no text cache" else cache_text_conditioning)(job.unet)
            t0 = time.perf_counter()
            for _ in range(10):
                if name == "diffusers-style":
                    diffusers_step(job, opt, job.batch(step, gen), gen)
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
