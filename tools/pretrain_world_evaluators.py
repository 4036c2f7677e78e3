"""Train the world's evaluators (attribute read-back, "DINO", CLIP) on ground-truth world renders.

    python tools/pretrain_world_evaluators.py --model attributes|dino|clip   # -> cascade_booth/world/models/
    python tools/pretrain_world_evaluators.py --check                        # held-out acceptance figures

Deterministic (seeded pool of renders, seeded batches). The pool of 128 px renders is cached in
``$CASCADE_BOOTH_CACHE/world-pretrain/pool-*.pt``; held-out figures use designs the training never saw
(ids from the subject range).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cascade_booth.images import to_tensor
from cascade_booth.models import cache_dir
from cascade_booth.world import evaluators as ev
from cascade_booth.world.cascade import SHIPPED
from cascade_booth.world.design import HELD_OUT_START, design
from cascade_booth.world.render import Scene, draw_scene
from cascade_booth.world.sampling import DROP, _pose
from cascade_booth.world.vocab import CONTEXTS, caption

VIEWS = 3


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
            images.append(torch.from_numpy(np.asarray(draw_scene(scene, ev.IMAGE_SIZE))).permute(2, 0, 1))
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


def train_attributes(steps: int) -> None:
    data = train_pool()
    images, labels = data["images"], data["labels"]
    targets = {k: torch.tensor([v.index(lab[k]) for lab in labels]) for k, v in ev.ATTRIBUTES.items()}
    model = ev.AttributeNet()
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for step in tqdm(range(steps), desc="attributes"):
        idx = torch.randint(0, len(labels), (48,), generator=gen)
        small = idx[:16]  # a third of each batch at stage one's size: no pattern target there
        small_up = F.interpolate(low_res(images[small]), (ev.IMAGE_SIZE, ev.IMAGE_SIZE), mode="bilinear")
        x = torch.cat([to_unit(images[idx[16:]]), small_up])  # AttributeNet upsamples 32 px input the same way
        out = model(x)
        loss = sum(F.cross_entropy(out[k], targets[k][torch.cat([idx[16:], small])]) for k in ev.ATTRIBUTES
                   if k != "pattern") + F.cross_entropy(out["pattern"][:32], targets["pattern"][idx[16:]])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
    ev.save_attributes(model, SHIPPED / "attributes")


def _pairs(labels: list[dict], gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` designs of the pool, two different views of each (pool rows ``VIEWS * d + v``)."""
    designs = torch.randperm(len(labels) // VIEWS, generator=gen)[:n]
    views = torch.stack([torch.randperm(VIEWS, generator=gen)[:2] for _ in range(n)])
    return designs * VIEWS + views[:, 0], designs * VIEWS + views[:, 1]


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    x = images.float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def train_dino(steps: int) -> None:
    data = train_pool()
    model = ev.build_dino()
    opt = torch.optim.AdamW(model.parameters(), 5e-4, weight_decay=0.05)
    gen = torch.Generator().manual_seed(1)
    for step in tqdm(range(steps), desc="dino"):
        a, b = _pairs(data["labels"], gen, 48)
        x = _normalize(data["images"][torch.cat([a, b])], ev.IMAGENET_MEAN, ev.IMAGENET_STD)
        z = F.normalize(model(pixel_values=x).last_hidden_state[:, 0], dim=-1)
        logits = z[:48] @ z[48:].T / 0.1  # InfoNCE on design ids: the other view of the design is the positive
        target = torch.arange(48)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 5e-4 * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
    ev.save_dino(model, SHIPPED / "dino")


def training_caption(label: dict, rng: np.random.Generator) -> str:
    keep = {k: rng.uniform() >= p for k, p in DROP.items()}
    return caption(label["class"], label["colour"] if keep["colour"] else None,
                   label["pattern"] if keep["pattern"] else None, label["context"] if keep["context"] else None)


def train_clip(steps: int) -> None:
    data = train_pool()
    folder = SHIPPED / "clip"
    tok = ev.build_clip_tokenizer(folder)
    model = ev.build_clip(len(tok))
    opt = torch.optim.AdamW(model.parameters(), 5e-4, weight_decay=0.05)
    gen, rng = torch.Generator().manual_seed(2), np.random.default_rng(2)
    for step in tqdm(range(steps), desc="clip"):
        idx = torch.randperm(len(data["labels"]), generator=gen)[:64]
        texts = [training_caption(data["labels"][i], rng) for i in idx.tolist()]
        tokens = tok(texts, padding=True, return_tensors="pt")
        pixels = _normalize(data["images"][idx], ev.CLIP_MEAN, ev.CLIP_STD)
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels,
                    return_loss=True)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 5e-4 * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
    ev.save_clip(model, tok, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["attributes", "dino", "clip"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="Print the held-out acceptance figures (JSON).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        from world_acceptance import evaluator_figures

        print(json.dumps(evaluator_figures(heldout_pool()), indent=1))
        return
    {"attributes": train_attributes, "dino": train_dino, "clip": train_clip}[args.model](args.steps)
    print(f"saved {SHIPPED / args.model}")


if __name__ == "__main__":
    main()
