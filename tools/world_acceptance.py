"""Acceptance figures of the world models, on held-out designs (issue 7's list).

    python tools/world_acceptance.py --evaluators          # read-back ceiling, DINO AUC, CLIP zero-shot
    python tools/world_acceptance.py --cascade --prompts 200  # the pretrained cascade, read back

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

from cascade_booth.config import load_config
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


def cascade_prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` prompts naming class, colour, pattern and a (non-plain) context, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    contexts = [c for c in CONTEXTS if c != "plain"]
    rows = []
    for _ in range(n):
        row = {"class": str(rng.choice(CLASSES)), "colour": str(rng.choice(list(COLOURS))),
               "pattern": str(rng.choice(list(PATTERNS))), "context": str(rng.choice(contexts))}
        rows.append({**row, "prompt": caption(row["class"], row["colour"], row["pattern"], row["context"])})
    return rows


def read_pngs(paths: list[Path]) -> torch.Tensor:
    """Rendered PNGs as one batch [n, 3, H, W] in [-1, 1], as the attribute net reads them."""
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def truth_image(row: dict, size: int):
    """A prompt's ground truth (PIL, ``size`` px): the first pretraining design with its class, colour and pattern,
    drawn in its context."""
    from cascade_booth.world.design import design
    from cascade_booth.world.render import Scene, draw_scene

    key = (row["class"], row["colour"], row["pattern"])
    d_id = next(i for i, d in ((i, design(i)) for i in range(100000)) if (d.cls, d.colour, d.pattern) == key)
    return draw_scene(Scene(design=d_id, context=row["context"]), size)


def _render(prompts: list[str], out: Path, sr: bool, steps: int, guidance: float | None = None,
            images: int = 1) -> torch.Tensor:
    """Each prompt rendered ``images`` times (seeds 0, 1, ...: prompt k's image i has the noise of seed i)."""
    from cascade_booth.runner import RenderRequest, render_run

    req = RenderRequest(run=None, config=load_config("world"), prompts=prompts, out=out, num_images=images, seed=0,
                        steps=steps, guidance=guidance, sr=sr, warn=lambda _m: None)
    return read_pngs([p for p in render_run(req) if p.name != "grid.png"])


def cascade_figures(n: int, steps: int, out: Path, sr: bool = True, guidance: float | None = None) -> dict:
    """Read back what the pretrained cascade draws for prompts that name every attribute (stage one at
    32 px, then both stages at 128 px unless ``sr`` is False)."""
    model = ev.load_attributes(SHIPPED / "attributes")
    rows = cascade_prompts(n)
    prompts = [r["prompt"] for r in rows]
    result: dict = {"prompts": n, "steps": steps, "guidance": guidance or load_config("world").render.guidance}
    for name, both in (("stage_one_32px", False), ("cascade_128px", True))[:2 if sr else 1]:
        reads = model.read(_render(prompts, out / name, both, steps, guidance))
        keys = [k for k in ev.ATTRIBUTES if both or k != "pattern"]
        result[name] = {k: float(np.mean([r[k] == row[k] for r, row in zip(reads, rows, strict=True)])) for k in keys}
    # 8 colour-free prompts x 6 seeds: the spread over seeds is the prior (one seed for all prompts is not)
    no_colour = [caption(r["class"], None, None, r["context"]) for r in rows[:8]]
    colours = [r["colour"] for r in model.read(_render(no_colour, out / "no_colour", False, steps, guidance, 6))]
    result["colour_omitted"] = {"prompts": len(no_colour), "images": len(colours),
                                "distinct_colours": len(set(colours)), "counts": {c: colours.count(c) for c in COLOURS}}
    return result


def preview(path: Path, steps: int, work: Path) -> None:
    """Ground truth (top) beside the pretrained cascade's samples of the same prompts (bottom), 128 px."""
    from PIL import Image

    from cascade_booth.pngmeta import grid

    rows = cascade_prompts(8, seed=1)
    tiles = [truth_image(row, 128) for row in rows]
    samples = _render([r["prompt"] for r in rows], work / "preview", True, steps)
    tiles += [Image.fromarray(((s.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)) for s in samples]
    grid([tiles[:8], tiles[8:]], pad=0).save(path)
    path.with_suffix(".txt").write_text("\n".join(r["prompt"] for r in rows) + "\n")


@torch.no_grad()
def sr_fidelity(n: int, steps: int) -> dict:
    """Stage two alone on ground truth: held-out 32 px renders -> 128 px, against the 128 px truth.

    Reports the mean squared error and the pattern read back from the SR output, beside the same
    figures for a plain bilinear upsample (what stage two must beat).
    """
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel, T5Tokenizer

    from cascade_booth.images import to_tensor
    from cascade_booth.sampling import make_scheduler, sample_sr
    from cascade_booth.text import TextEmbeddings
    from cascade_booth.world.cascade import noising_scheduler
    from cascade_booth.world.render import draw_scene
    from cascade_booth.world.sampling import subject_examples

    examples = [subject_examples(c, seed, 1)[0] for seed in range(100, 100 + n // len(CLASSES) + 1)
                for c in CLASSES][:n]
    hi = torch.stack([to_tensor(draw_scene(e.scene, 128), 128) for e in examples])
    low = torch.stack([to_tensor(draw_scene(e.scene, 128), 32) for e in examples])
    folder = SHIPPED / "sr"
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").float().eval()
    tok = T5Tokenizer.from_pretrained(folder / "tokenizer")
    enc = T5EncoderModel.from_pretrained(folder / "text_encoder")
    text = TextEmbeddings._encode(tok, enc, [e.caption for e in examples], "cpu")
    neg = TextEmbeddings._encode(tok, enc, [""], "cpu").expand(len(examples), -1, -1)
    scheduler = make_scheduler(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), "learned",
                               steps, "cpu")
    gens = [torch.Generator().manual_seed(i) for i in range(len(examples))]
    start = load_config("world").render.sr_start  # as render samples it
    out = sample_sr(unet, scheduler, noising_scheduler(), low, text, neg, 50, 1.0, gens, start=start).clamp(-1, 1)
    bilinear = F.interpolate(low, (128, 128), mode="bilinear", align_corners=True)
    model = ev.load_attributes(SHIPPED / "attributes")
    truth = [e.design.pattern for e in examples]

    def pattern_acc(x: torch.Tensor) -> float:
        return float(np.mean([r["pattern"] == p for r, p in zip(model.read(x), truth, strict=True)]))

    return {"images": len(examples), "steps": steps, "noise_level": 50, "sr_start": start,
            "mse_sr": float(((out - hi) ** 2).mean()), "mse_bilinear": float(((bilinear - hi) ** 2).mean()),
            "pattern_read_back_sr": pattern_acc(out), "pattern_read_back_bilinear": pattern_acc(bilinear),
            "pattern_read_back_truth": pattern_acc(hi)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluators", action="store_true")
    parser.add_argument("--cascade", action="store_true")
    parser.add_argument("--sr", action="store_true", help="Stage two alone on held-out ground-truth 32 px input.")
    parser.add_argument("--no-sr", action="store_true", help="--cascade: stage one (32 px) only.")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, help="--cascade: stage one's guidance (default: the world preset's)")
    parser.add_argument("--work", type=Path, default=Path("build/world-acceptance"))
    parser.add_argument("--preview", type=Path, help="Write a ground truth / samples picture (PNG) here.")
    parser.add_argument("--out", type=Path, help="JSON file; the sections measured replace theirs in it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {}
    if args.evaluators:
        from pretrain_world_evaluators import heldout_pool

        result["evaluators"] = evaluator_figures(heldout_pool())
    if args.sr:
        result["sr_on_ground_truth"] = sr_fidelity(24, args.steps)
    if args.cascade:
        result["cascade"] = cascade_figures(args.prompts, args.steps, args.work, sr=not args.no_sr,
                                            guidance=args.guidance)
    if args.preview:
        preview(args.preview, args.steps, args.work)
    print(json.dumps(result, indent=1))
    if args.out:  # merged into what is there: each section is measured on its own
        earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.write_text(json.dumps(earlier | result, indent=1) + "\n")


if __name__ == "__main__":
    main()
