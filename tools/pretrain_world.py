"""Pretrain the world cascade (stage one 32 px, stage two 32 -> 128) on the procedural world.

    python tools/pretrain_world.py --model base --steps 12000      # resumable: rerun the same line
    python tools/pretrain_world.py --model sr --steps 12000
    python tools/pretrain_world.py --export                         # EMA weights -> cascade_booth/world/models

Deterministic: example i of step s is world example (seed, s * batch + i), the noise comes from a
generator seeded per step, so a killed run resumes to the same weights. The state (weights, EMA,
optimizer, step, loss log, sample grids) lives in ``$CASCADE_BOOTH_CACHE/world-pretrain`` outside
the repository. With ``--init-from-shipped`` a fresh state starts from the shipped weights (a later
session on a new machine carries on where the shipped model stopped; the model card records it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pretrain_world_settings import (  # a sibling: the script's folder is first on sys.path
    DEFAULTS,
    SEED,
    SETTINGS,
    log_summary,
    segment_values,
    state_settings,
    write_model_card,
)
from tqdm import tqdm

from cascade_booth.diffusion import sr_condition, training_losses
from cascade_booth.images import to_tensor
from cascade_booth.models import cache_dir
from cascade_booth.runfolder import atomic_path
from cascade_booth.sampling import make_scheduler, sample_base
from cascade_booth.text import TextEmbeddings
from cascade_booth.world import cascade
from cascade_booth.world.render import draw_scene
from cascade_booth.world.sampling import dataset_example

CROP = 64  # stage two trains on 64 px crops of the 128 px target (its convolutions see the same scales)
UNCOND = 0.1  # caption dropped to "" this often, for classifier-free guidance at render


def state_dir() -> Path:
    return cache_dir() / "world-pretrain"


def text_models(root: Path):
    """The shared tokenizer + frozen T5 (built once, saved, reused by both stages and the export)."""
    from transformers import T5EncoderModel, T5Tokenizer

    folder = root / "text"
    shipped = cascade.SHIPPED / "base"
    if not (folder / "text_encoder" / "config.json").exists() and (shipped / "text_encoder").is_dir():
        # A new machine carries on from the shipped weights: they were trained on exactly these (frozen) texts.
        tmp = root / ".text-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for part in ("tokenizer", "text_encoder"):
            shutil.copytree(shipped / part, tmp / part)
        tmp.rename(folder)
    if not (folder / "text_encoder" / "config.json").exists():
        tok = cascade.build_tokenizer()
        enc = cascade.build_text_encoder(len(tok))
        tmp = root / ".text-tmp"
        tok.save_pretrained(tmp / "tokenizer")
        enc.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tmp.rename(folder)
    return (T5Tokenizer.from_pretrained(folder / "tokenizer"),
            T5EncoderModel.from_pretrained(folder / "text_encoder").eval())


def caption_table(root: Path) -> tuple[dict[str, int], torch.Tensor]:
    """T5 states [n, 77, d] of every template caption and of "" (the unconditional prompt)."""
    path = root / "captions.pt"
    if path.exists():
        data = torch.load(path)
        return data["index"], data["embeds"]
    tok, enc = text_models(root)
    captions = ["", *cascade.all_captions()]
    embeds = torch.cat([TextEmbeddings._encode(tok, enc, captions[i:i + 64], "cpu")
                        for i in range(0, len(captions), 64)])
    index = {c: i for i, c in enumerate(captions)}
    with atomic_path(path) as tmp:
        torch.save({"index": index, "embeds": embeds}, tmp)
    return index, embeds


class WorldData(torch.utils.data.Dataset):
    """Example k of the stream: (target image, low-res image or empty, caption index)."""

    def __init__(self, model: str, index: dict[str, int]):
        self.model, self.index = model, index

    def __len__(self) -> int:
        return 2**40

    def __getitem__(self, k: int):
        ex = dataset_example(SEED[self.model], k)
        rng = np.random.default_rng([SEED[self.model], k, 99])
        text = 0 if rng.uniform() < UNCOND else self.index[ex.caption]
        if self.model == "base":
            return to_tensor(draw_scene(ex.scene, 32), 32), torch.zeros(0), text
        hi = draw_scene(ex.scene, 128)
        return to_tensor(hi, 128), to_tensor(hi, 32), text  # the low-res input: the photo path of stage two


class Stream(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        k = self.start
        while True:
            yield k
            k += 1


def build_unet(model: str, root: Path, init_from_shipped: bool):
    from diffusers import UNet2DConditionModel

    stage = 1 if model == "base" else 2
    shipped = cascade.SHIPPED / model / "unet"
    if init_from_shipped and shipped.is_dir():
        return UNet2DConditionModel.from_pretrained(shipped, torch_dtype=torch.float32)
    torch.manual_seed(SEED[model])
    return UNet2DConditionModel(**cascade.unet_config(stage))


def sr_batch(hi: torch.Tensor, low: torch.Tensor, noising, gen: torch.Generator):
    """Random noise level per sample (IF-II is trained across augmentation levels), then matching crops."""
    levels = torch.randint(0, 400, (hi.shape[0],), generator=gen)
    conds = []
    for i in range(hi.shape[0]):
        cond, _ = sr_condition(low[i:i + 1], hi.shape[-1], int(levels[i]), noising, gen)
        conds.append(cond)
    cond = torch.cat(conds)
    y, x = (int(v) for v in torch.randint(0, hi.shape[-1] - CROP + 1, (2,), generator=gen))
    return hi[..., y:y + CROP, x:x + CROP], cond[..., y:y + CROP, x:x + CROP], levels


def save_state(path: Path, unet, ema, opt, step: int, start: int, args) -> None:
    with atomic_path(path) as tmp:
        torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "start": start, "settings": {name: getattr(args, name) for name in SETTINGS}}, tmp)


@torch.no_grad()
def sample_grid(ema, model: str, index, embeds, root: Path, step: int) -> None:
    """A 4 x 4 grid of stage-one samples (fixed prompts and noise) to watch the learning curve."""
    if model != "base":
        return
    from cascade_booth.world.vocab import CLASSES, COLOURS, CONTEXTS, caption

    prompts = [caption(c, col, None, ctx) for c, col, ctx in
               zip(CLASSES * 3, list(COLOURS) * 2, list(CONTEXTS)[1:] * 3, strict=False)][:16]
    cond = torch.stack([embeds[index[p]] for p in prompts])
    sched = make_scheduler(cascade.if_scheduler(1.5).config, "learned", 50, "cpu")
    x = sample_base(ema, sched, cond, embeds[0:1].expand(16, -1, -1), 4.0, torch.Generator().manual_seed(0))
    img = ((x.clamp(-1, 1) + 1) * 127.5).byte().permute(0, 2, 3, 1).numpy()
    grid = img.reshape(4, 4, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(128, 128, 3)
    Image.fromarray(grid).resize((384, 384), Image.Resampling.NEAREST).save(root / f"samples-{step:06d}.png")
    (root / f"samples-{step:06d}.txt").write_text("\n".join(prompts))


def train(args) -> None:
    root = state_dir() / args.model
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    index, embeds = caption_table(state_dir())
    unet = build_unet(args.model, root, args.init_from_shipped)
    ema = build_unet(args.model, root, args.init_from_shipped).requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    step = start = 0
    if (root / "state.pt").exists():
        state = torch.load(root / "state.pt", weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, start = state["step"], state.get("start", 0)
    elif args.init_from_shipped:  # carry on from the shipped weights: same stream, schedule and step count
        step = start = json.loads((cascade.SHIPPED / args.model / "pretrain.json").read_text())["steps"]
    sched = cascade.if_scheduler(1.5)
    noising = cascade.noising_scheduler()
    loader = iter(torch.utils.data.DataLoader(WorldData(args.model, index), batch_size=args.batch,
                                              sampler=Stream(step * args.batch), num_workers=args.workers))
    log = open(root / "losses.jsonl", "a")
    bar = tqdm(total=args.steps, initial=step, desc=f"pretrain {args.model}", dynamic_ncols=True)
    started = time.time()
    while step < args.steps:
        hi, low, text = next(loader)
        gen = torch.Generator().manual_seed(SEED[args.model] * 10**9 + step)
        for group in opt.param_groups:  # linear warm-up, then cosine to 10 %
            warm = min(1.0, (step - start + 1) / 500)  # fresh AdamW moments (a new start) warm up again
            group["lr"] = args.lr * warm * (0.55 + 0.45 * math.cos(math.pi * min(step / args.steps, 1.0)))
        if args.model == "base":
            cond, labels, x0 = None, None, hi
        else:
            x0, cond, labels = sr_batch(hi, low, noising, gen)
        # Stage two weights its loss like the x0 error (losses.x0_weights): plain epsilon MSE barely teaches the SR
        # model to copy its low-res input at high noise, and sampling from pure noise then locks into a wrong start.
        # Stage one began on IF's plain objective; colour and background are decided at high noise too, where the
        # plain loss hardly tells "orange" from "yellow" (tools/results/world-colour-2026-12-06.md).
        loss = training_losses(unet, sched, x0, embeds[text], gen, "learned", cond=cond, class_labels=labels,
                               x0_weight_cap=args.x0_weight_cap, offset_noise=args.offset_noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))  # EMA warm-up: early weights are not averaged in
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        log.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "t": round(time.time() - started, 1)})
                  + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.save_every == 0 or step == args.steps:
            log.flush()
            save_state(root / "state.pt", unet, ema, opt, step, start, args)
        if step % args.sample_every == 0:
            sample_grid(ema.eval(), args.model, index, embeds, root, step)
    bar.close()


def training_summary(model: str, step: int) -> dict:
    """Steps, wall time (summed over resumed segments) and the mean loss of the last 200 steps."""
    rows = [json.loads(line) for line in (state_dir() / model / "losses.jsonl").read_text().splitlines()]
    wall_hours, final_loss = log_summary([r for r in rows if r["step"] <= step])
    return {"steps": step, "examples": step * DEFAULTS[model]["batch"], "wall_hours": wall_hours,
            "final_loss_mean_last_200": final_loss}


def export(out: Path) -> None:
    """Write the EMA weights of both stages as IF pipelines (fp16 UNets) under ``out``, with a summary; a stage
    with no pretraining state on this machine keeps its shipped weights."""
    from diffusers import UNet2DConditionModel

    tok, enc = text_models(state_dir())
    for model, stage in (("base", 1), ("sr", 2)):
        if not (state_dir() / model / "state.pt").exists():  # not trained on this machine: the shipped one stays
            if out.resolve() != cascade.SHIPPED.resolve():
                shutil.copytree(cascade.SHIPPED / model, out / model, dirs_exist_ok=True)
            print(f"kept the shipped {model} (no state in {state_dir() / model})")
            continue
        state = torch.load(state_dir() / model / "state.pt", weights_only=False)
        card = out / model / "pretrain.json"
        earlier = json.loads(card.read_text()) if state.get("start", 0) and card.exists() else None
        unet = UNet2DConditionModel(**cascade.unet_config(stage))
        unet.load_state_dict(state["ema"])
        cascade.save_pipeline(out / model, stage, unet.half(), tok, enc)
        summary = {**training_summary(model, state["step"]), "seed": SEED[model], "batch": DEFAULTS[model]["batch"],
                   "data": "world stream: example k = dataset_example(seed, k), infinite"}
        this = state_settings(model, state)
        segments = {name: [this[name]] for name in SETTINGS}
        if earlier is not None:  # this segment started from the shipped weights at step `start`
            summary["wall_hours"] = round(summary["wall_hours"] + earlier["wall_hours"], 2)
            summary["segments"] = earlier.get("segments", [earlier["steps"]]) + [state["step"]]
            segments = {name: segment_values(model, earlier, name) + [this[name]] for name in SETTINGS}
        summary.update({f"{name}s": values for name, values in segments.items()})
        card.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"exported {model} at step {state['step']} -> {out / model}")
    write_model_card(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["base", "sr"])
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--ema", type=float, help="EMA decay (0.999)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--init-from-shipped", action="store_true")
    parser.add_argument("--x0-weight-cap", type=float, help="cap of the 1/alpha_bar loss weight (base 1: plain; sr 20)")
    parser.add_argument("--offset-noise", type=float, help="std of a per-image, per-channel constant added to the "
                        "noise (diffusion.training_losses; 0: IF's plain noise)")
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--out", type=Path, default=cascade.SHIPPED)
    args = parser.parse_args()
    if args.export:
        return export(args.out)
    if args.model is None:
        parser.error("--model base|sr (or --export)")
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    train(args)


if __name__ == "__main__":
    main()
