"""Train the world's evaluators (attribute read-back, "DINO", CLIP) on ground-truth world renders.

    python tools/pretrain_world_evaluators.py --model attributes|dino|clip --steps N  # -> cascade_booth/world/models/
    python tools/pretrain_world_evaluators.py --model clip --steps N --init-from-shipped --lr 2e-4  # a later segment
    python tools/pretrain_world_evaluators.py --check                        # held-out acceptance figures

Deterministic (seeded pool of renders, batches drawn from generators seeded per step) and resumable: a killed run
started again with the same line carries on from ``$CASCADE_BOOTH_CACHE/world-pretrain/MODEL/state.pt`` to the same
weights (delete that folder to start over). The pool of 128 px renders is cached in
``$CASCADE_BOOTH_CACHE/world-pretrain/pool-*.pt``; held-out figures use designs the training never saw (ids from
the subject range). ``pretrain.json`` beside the saved weights lists each segment's end step and lr.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pretrain_world_settings import EVALUATOR_LR, log_summary, write_model_card  # siblings: tools/ is on sys.path
from tqdm import tqdm

from cascade_booth.images import to_tensor
from cascade_booth.models import cache_dir
from cascade_booth.runfolder import atomic_path
from cascade_booth.world import evaluators as ev
from cascade_booth.world.cascade import SHIPPED
from cascade_booth.world.design import HELD_OUT_START, design
from cascade_booth.world.render import Scene, draw_scene
from cascade_booth.world.sampling import DROP, _pose
from cascade_booth.world.vocab import CONTEXTS, caption

VIEWS = 3
SEEDS = {"attributes": 0, "dino": 1, "clip": 2}  # each model's batches: step_generator(name, step)


def pool(name: str, designs: list[int], seed: int) -> dict:
    """``VIEWS`` renders per design (random contexts and poses), uint8 [N, 3, 128, 128], with labels."""
    path = cache_dir() / "world-pretrain" / f"pool-{name}.pt"
    if path.exists():
        return torch.load(path)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for d_id in tqdm(designs, desc=f"rendering {name}"):
        d = design(d_id)
        for _ in range(VIEWS):
            context = str(rng.choice(list(CONTEXTS)))
            scene: Scene = _pose(rng, context, d_id)
            images.append(torch.from_numpy(np.array(draw_scene(scene, ev.IMAGE_SIZE))).permute(2, 0, 1))
            labels.append({"design": d_id, "class": d.cls, "colour": d.colour, "pattern": d.pattern,
                           "context": context})
    data = {"images": torch.stack(images), "labels": labels}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def train_pool() -> dict:
    rng = np.random.default_rng(11)
    return pool("train", [int(i) for i in rng.integers(0, HELD_OUT_START, 2400)], 12)


def heldout_pool() -> dict:
    return pool("heldout", list(range(HELD_OUT_START + 600, HELD_OUT_START + 900)), 13)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def low_res(images: torch.Tensor) -> torch.Tensor:
    """The same images through stage one's 32 px (the read-back must read stage-one samples too)."""
    from PIL import Image

    out = [to_tensor(Image.fromarray(im.permute(1, 2, 0).numpy()), 32) for im in images]
    return torch.stack(out)


def step_generator(name: str, step: int) -> torch.Generator:
    """The generator of one training step's batch: a resumed run draws the very batches an unbroken one would."""
    return torch.Generator().manual_seed(SEEDS[name] * 10**9 + step)


def state_dir(name: str) -> Path:
    return cache_dir() / "world-pretrain" / name


def shipped_steps(name: str) -> int:
    """The step the shipped weights stopped at (``pretrain.json`` beside them), where ``--init-from-shipped`` starts."""
    card = SHIPPED / name / "pretrain.json"
    if not card.exists():
        raise SystemExit(f"--init-from-shipped: {card} is missing, so the shipped {name}'s step count is unknown")
    return int(json.loads(card.read_text())["steps"])


def check_segment(args: argparse.Namespace) -> None:
    """Refuse, before the pool is rendered, a new ``--init-from-shipped`` segment that would train nothing."""
    if args.init_from_shipped and not (state_dir(args.model) / "state.pt").exists():
        start = shipped_steps(args.model)
        if args.steps <= start:
            raise SystemExit(f"--steps {args.steps}: the shipped {args.model} is already at step {start}; a later "
                             "segment trains past it")


def fit(name: str, model: torch.nn.Module, loss_at: Callable[[int], torch.Tensor], save: Callable[[], None],
        args: argparse.Namespace, lr: float, weight_decay: float, warmup: int) -> None:
    """The evaluators' one training loop: AdamW, linear warm-up, cosine to 0 at ``args.steps``.

    ``loss_at(step)`` draws its batch from generators seeded by the step, so a run killed and started again with the
    same line resumes from ``state.pt`` (every ``--save-every`` steps, written atomically) to the same weights. With
    ``--init-from-shipped`` a fresh state starts from the shipped weights at their step count (a later segment).
    At the end ``save()`` writes the weights, and ``pretrain.json`` beside them records every segment.
    """
    root = state_dir(name)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    step = start = 0
    earlier: dict = {"segments": [], "lrs": [], "wall_hours_per_segment": []}  # the shipped card, for a later segment
    if (root / "state.pt").exists():
        state = torch.load(root / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, start, earlier = state["step"], state["start"], state["earlier"]
    elif args.init_from_shipped:
        step = start = shipped_steps(name)
        earlier = json.loads((SHIPPED / name / "pretrain.json").read_text())
    log = root / "losses.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "a") as out, tqdm(total=args.steps, initial=step, desc=name) as bar:
        while step < args.steps:
            for group in opt.param_groups:  # fresh AdamW moments (a new segment) warm up again
                group["lr"] = lr * min(1.0, (step - start + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
            loss = loss_at(step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            out.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "t": round(time.time() - started, 1)})
                      + "\n")
            bar.update(1)
            if step % args.save_every == 0 or step == args.steps:
                out.flush()
                with atomic_path(root / "state.pt") as tmp:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "start": start,
                                "earlier": earlier}, tmp)
    save()
    record(name, step, start, lr, earlier)


def record(name: str, step: int, start: int, lr: float, earlier: dict) -> None:
    """``pretrain.json`` beside the saved weights: steps, each segment's end and lr, wall time, the last losses."""
    rows = [json.loads(line) for line in (state_dir(name) / "losses.jsonl").read_text().splitlines()]
    wall_hours, final_loss = log_summary([r for r in rows if start < r["step"] <= step])
    hours = [*earlier.get("wall_hours_per_segment", [earlier.get("wall_hours")] * len(earlier["segments"])), wall_hours]
    info = {"steps": step, "segments": [*earlier["segments"], step], "lrs": [*earlier["lrs"], lr], "seed": SEEDS[name],
            "wall_hours_per_segment": hours, "final_loss_mean_last_200": final_loss}
    known = [h for h in info["wall_hours_per_segment"] if h is not None]
    info["wall_hours"] = round(sum(known), 2) if len(known) == len(info["segments"]) else None  # None: not all recorded
    if "note" in earlier:  # what an earlier segment's card says about itself
        info["note"] = earlier["note"]
    (SHIPPED / name / "pretrain.json").write_text(json.dumps(info, indent=1) + "\n")
    if (SHIPPED / "base" / "pretrain.json").exists():  # the card lists every model beside the cascade's
        write_model_card(SHIPPED)


def train_attributes(args: argparse.Namespace) -> None:
    data = train_pool()
    images, labels = data["images"], data["labels"]
    targets = {k: torch.tensor([v.index(lab[k]) for lab in labels]) for k, v in ev.ATTRIBUTES.items()}
    model = ev.load_attributes(SHIPPED / "attributes").train() if args.init_from_shipped else ev.AttributeNet()

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(labels), (48,), generator=step_generator("attributes", step))
        small = idx[:16]  # a third of each batch at stage one's size: no pattern target there
        small_up = F.interpolate(low_res(images[small]), (ev.IMAGE_SIZE, ev.IMAGE_SIZE), mode="bilinear")
        x = torch.cat([to_unit(images[idx[16:]]), small_up])  # AttributeNet upsamples 32 px input the same way
        out = model(x)
        return sum(F.cross_entropy(out[k], targets[k][torch.cat([idx[16:], small])]) for k in ev.ATTRIBUTES
                   if k != "pattern") + F.cross_entropy(out["pattern"][:32], targets["pattern"][idx[16:]])

    fit("attributes", model, loss_at, lambda: ev.save_attributes(model, SHIPPED / "attributes"), args,
        args.lr or EVALUATOR_LR["attributes"], 1e-4, warmup=1)


def _pairs(labels: list[dict], gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` designs of the pool, two different views of each (pool rows ``VIEWS * d + v``)."""
    designs = torch.randperm(len(labels) // VIEWS, generator=gen)[:n]
    views = torch.stack([torch.randperm(VIEWS, generator=gen)[:2] for _ in range(n)])
    return designs * VIEWS + views[:, 0], designs * VIEWS + views[:, 1]


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def train_dino(args: argparse.Namespace) -> None:
    from transformers import ViTModel

    data = train_pool()
    model = ViTModel.from_pretrained(SHIPPED / "dino") if args.init_from_shipped else ev.build_dino()

    def loss_at(step: int) -> torch.Tensor:
        a, b = _pairs(data["labels"], step_generator("dino", step), 48)
        x = _normalize(data["images"][torch.cat([a, b])], ev.IMAGENET_MEAN, ev.IMAGENET_STD)
        z = F.normalize(model(pixel_values=x).last_hidden_state[:, 0], dim=-1)
        logits = z[:48] @ z[48:].T / 0.1  # InfoNCE on design ids: the other view of the design is the positive
        target = torch.arange(48)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    fit("dino", model.train(), loss_at, lambda: ev.save_dino(model, SHIPPED / "dino"), args,
        args.lr or EVALUATOR_LR["dino"], 0.05, warmup=100)


def training_caption(label: dict, rng: np.random.Generator) -> str:
    keep = {k: rng.uniform() >= p for k, p in DROP.items()}
    return caption(label["class"], label["colour"] if keep["colour"] else None,
                   label["pattern"] if keep["pattern"] else None, label["context"] if keep["context"] else None)


def train_clip(args: argparse.Namespace) -> None:
    from transformers import CLIPModel

    data = train_pool()
    folder = SHIPPED / "clip"
    tok = ev.build_clip_tokenizer(folder)
    model = CLIPModel.from_pretrained(folder) if args.init_from_shipped else ev.build_clip(len(tok))

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randperm(len(data["labels"]), generator=step_generator("clip", step))[:64]
        rng = np.random.default_rng([SEEDS["clip"], step])
        texts = [training_caption(data["labels"][i], rng) for i in idx.tolist()]
        tokens = tok(texts, padding=True, return_tensors="pt")
        pixels = _normalize(data["images"][idx], ev.CLIP_MEAN, ev.CLIP_STD)
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels,
                     return_loss=True).loss

    fit("clip", model.train(), loss_at, lambda: ev.save_clip(model, tok, folder), args,
        args.lr or EVALUATOR_LR["clip"], 0.05, warmup=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["attributes", "dino", "clip"])
    parser.add_argument("--steps", type=int, default=1500, help="train to this step (a later segment: past the "
                        "shipped model's step)")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default: {EVALUATOR_LR})")
    parser.add_argument("--init-from-shipped", action="store_true", help="a fresh state starts from the shipped "
                        "weights at their step (their pretrain.json)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="Print the held-out acceptance figures (JSON).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        from world_acceptance import evaluator_figures

        print(json.dumps(evaluator_figures(heldout_pool()), indent=1))
        return
    if args.model is None:
        parser.error("--model attributes|dino|clip (or --check)")
    check_segment(args)
    {"attributes": train_attributes, "dino": train_dino, "clip": train_clip}[args.model](args)
    print(f"saved {SHIPPED / args.model}")


if __name__ == "__main__":
    main()
