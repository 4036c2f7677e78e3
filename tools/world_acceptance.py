"""Acceptance figures of the world models, on held-out designs (issue 7's list).

    python tools/world_acceptance.py --evaluators          # read-back ceiling, DINO AUC, CLIP zero-shot
    python tools/world_acceptance.py --cascade --prompts 200  # pretrained cascade read back

Prints JSON (and writes it with ``--out``). The evaluator figures use the held-out pool of
``pretrain_world_evaluators.py`` (designs from the subject id range, never trained on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cascade_booth.world import evaluators as ev
from cascade_booth.world.cascade import SHIPPED
from cascade_booth.world.vocab import CLASSES, COLOURS, CONTEXTS, PATTERNS, caption


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    scores = torch.cat([pos, neg])
    ranks = scores.argsort().argsort().float() + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def attribute_accuracy(model: ev.AttributeNet, images: torch.Tensor, labels: list[dict], low: bool) -> dict:
    from pretrain_world_evaluators import low_res, to_unit

    reads = []
    for i in range(0, len(labels), 128):
        batch = images[i:i + 128]
        reads += model.read(low_res(batch) if low else to_unit(batch))
    keys = [k for k in ev.ATTRIBUTES if not (low and k == "pattern")]
    return {k: float(np.mean([r[k] == lab[k] for r, lab in zip(reads, labels, strict=True)])) for k in keys}


@torch.no_grad()
def dino_auc(images: torch.Tensor, labels: list[dict]) -> float:
    from PIL import Image

    from cascade_booth.evaluation.extractors import DinoExtractor

    dino = DinoExtractor.from_pretrained(str(SHIPPED / "dino"), device="cpu")
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    z = F.normalize(dino.embed_images(pil, batch_size=64), dim=-1)
    sim = z @ z.T
    ids = torch.tensor([lab["design"] for lab in labels])
    same = ids[:, None] == ids[None, :]
    upper = torch.triu(torch.ones_like(same), 1)
    # across contexts: pairs whose two photos are in different contexts
    ctx = [lab["context"] for lab in labels]
    diff_ctx = torch.tensor([[a != b for b in ctx] for a in ctx])
    return auc(sim[same & upper & diff_ctx], sim[~same & upper & diff_ctx])


@torch.no_grad()
def clip_figures(images: torch.Tensor, labels: list[dict]) -> dict:
    from PIL import Image

    from cascade_booth.evaluation.extractors import ClipExtractor

    clip = ClipExtractor.from_pretrained(str(SHIPPED / "clip"), device="cpu")
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    zi = F.normalize(clip.embed_images(pil, batch_size=64), dim=-1)

    def text(prompts: list[str]) -> torch.Tensor:
        return F.normalize(clip.embed_texts(prompts), dim=-1)

    cls_t = text([caption(c) for c in CLASSES])
    ctx_t = torch.stack([F.normalize(text([caption(c, None, None, x) for c in CLASSES]).mean(0), dim=0)
                         for x in CONTEXTS])  # class-agnostic: averaged over the class nouns
    cls_pick, ctx_pick = (zi @ cls_t.T).argmax(1).tolist(), (zi @ ctx_t.T).argmax(1).tolist()
    cls_acc = np.mean([CLASSES[i] == lab["class"] for i, lab in zip(cls_pick, labels, strict=True)])
    ctx_acc = np.mean([list(CONTEXTS)[i] == lab["context"] for i, lab in zip(ctx_pick, labels, strict=True)])
    full = text([caption(lab["class"], lab["colour"], lab["pattern"], lab["context"]) for lab in labels])
    rng = np.random.default_rng(0)
    wrong = []
    for lab in labels:  # a caption differing in one random attribute
        other = dict(lab)
        key = str(rng.choice(["class", "colour", "pattern", "context"]))
        choices = {"class": CLASSES, "colour": list(COLOURS), "pattern": list(PATTERNS), "context": list(CONTEXTS)}
        other[key] = str(rng.choice([v for v in choices[key] if v != lab[key]]))
        wrong.append(caption(other["class"], other["colour"], other["pattern"], other["context"]))
    match = (zi * full).sum(1) > (zi * text(wrong)).sum(1)
    return {"zero_shot_class": float(cls_acc), "zero_shot_context": float(ctx_acc),
            "clip_t_match_above_mismatch": float(match.float().mean())}


def evaluator_figures(pool: dict) -> dict:
    images, labels = pool["images"], pool["labels"]
    out: dict = {"heldout_images": len(labels), "heldout_designs": len({lab["design"] for lab in labels})}
    if (SHIPPED / "attributes").is_dir():
        model = ev.load_attributes(SHIPPED / "attributes")
        out["attributes_128px"] = attribute_accuracy(model, images, labels, low=False)
        out["attributes_32px"] = attribute_accuracy(model, images, labels, low=True)
    if (SHIPPED / "dino").is_dir():
        out["dino_same_vs_different_design_auc"] = dino_auc(images, labels)
    if (SHIPPED / "clip").is_dir():
        out.update(clip_figures(images, labels))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluators", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {}
    if args.evaluators:
        from pretrain_world_evaluators import heldout_pool

        result["evaluators"] = evaluator_figures(heldout_pool())
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
