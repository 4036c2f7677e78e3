"""Issue 13: where the pretrained world cascade keeps a colour, and how strongly its loss tells colours apart.

    python tools/world_colour_probe.py loss --subject PHOTOS [--subject PHOTOS ...] [--draws 16]
    python tools/world_colour_probe.py pieces --colour orange --other yellow --class-noun teapot --out DIR

``loss``: stage one learns a subject's colour from the denoising loss on its photos. This prints, for each world
colour C, the frozen stage-one UNet's loss on the photos (32 px) conditioned on "a C <class>", with the same
timesteps (drawn in [300, 900), where a render's colours are decided) and noise for every prompt: the epsilon
loss, and the error of the predicted x0 averaged over 8x8 blocks (the image's colours, without its detail).
The subject's own colour should have the lowest; its margin over the next colour is how strongly training is
pushed toward it rather than toward a neighbour.

``pieces``: the world's colour words are 2-4 sentencepiece pieces, [V] is one. Renders (stage one, 32 px, the
preset's guidance and steps, every non-plain context) from T5 states spliced together, read back by the world
attribute net: "a COLOUR <class> <context>"; its colour's pieces put into "a OTHER ..." (same piece count), which
tells whether the UNet reads the colour at the word's positions or elsewhere; and each single piece kept with
the others removed (the prompt shortened), which tells whether one position can carry it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F


@lru_cache(maxsize=1)  # one load per process, however many subjects
def _models():
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from cascade_booth.models import resolve_model
    from cascade_booth.text import TextEmbeddings, load_tokenizer

    path = resolve_model("world", 1)
    unet = UNet2DConditionModel.from_pretrained(path / "unet").eval()
    texts = TextEmbeddings(path, Path(tempfile.gettempdir()) / "world-colour-probe")
    return unet, DDPMScheduler.from_pretrained(path / "scheduler"), texts, load_tokenizer(path)


@torch.no_grad()
def loss_table(subject: Path, draws: int) -> list[tuple[str, float, float]]:
    """(colour, epsilon loss, 8x8-block x0 error) per world colour (and "" for none), best first."""
    from PIL import Image

    from cascade_booth.images import to_tensor
    from cascade_booth.world.vocab import COLOURS

    unet, scheduler, texts, _ = _models()
    cls = json.loads((subject / "subject.json").read_text())["class"]
    x0 = torch.stack([to_tensor(Image.open(p).convert("RGB"), 32) for p in sorted(subject.glob("*.png"))])
    words = ["", *COLOURS]
    prompts = [" ".join(filter(None, ["a", w, cls])) for w in words]
    texts.ensure(prompts)
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(300, 900, (draws, len(x0)), generator=gen)
    noise = torch.randn((draws, *x0.shape), generator=gen)
    rows = []
    for word, prompt in zip(words, prompts, strict=True):
        text = texts.get(prompt)[None].expand(len(x0), -1, -1)
        eps_err = block_err = 0.0
        for i in range(draws):
            x_t = scheduler.add_noise(x0, noise[i], t[i])
            eps = unet(x_t, t[i], encoder_hidden_states=text, return_dict=False)[0][:, :3]
            ab = scheduler.alphas_cumprod[t[i]].view(-1, 1, 1, 1)
            x0_hat = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
            eps_err += F.mse_loss(eps, noise[i]).item() / draws
            block_err += F.mse_loss(F.avg_pool2d(x0_hat, 8), F.avg_pool2d(x0, 8)).item() / draws
        rows.append((word or "(none)", eps_err, block_err))
    return sorted(rows, key=lambda r: r[2])


@torch.no_grad()
def piece_rates(colour: str, other: str, cls: str, out: Path, repeats: int) -> dict[str, Counter]:
    """Colour read-back counts of the spliced renders (see the module docstring), by condition."""
    from cascade_booth.config import load_config
    from cascade_booth.sampling import make_scheduler, sample_base, to_pil
    from cascade_booth.world.readback import read_images
    from cascade_booth.world.vocab import CONTEXTS

    unet, scheduler, texts, tokenizer = _models()
    render = load_config("world").render
    contexts = [phrase for phrase in CONTEXTS.values() if phrase]
    own, alt = ([f"a {w} {cls} {c}" for c in contexts] for w in (colour, other))
    texts.ensure(["", *own, *alt])
    n = len(tokenizer.tokenize(f"a {colour}"))  # position 0 is "a"; 1..n-1 the colour's pieces
    if n != len(tokenizer.tokenize(f"a {other}")):
        raise SystemExit(f"'{colour}' and '{other}' have different piece counts: pick another --other")
    a, b = texts.stack(own), texts.stack(alt)
    pieces = torch.zeros(a.shape[1], dtype=torch.bool)
    pieces[1:n] = True
    cases = {colour: a, f"{colour}'s pieces in '{other}'": torch.where(pieces[None, :, None], a, b)}
    for k in range(1, n):
        keep = [i for i in range(a.shape[1]) if not (pieces[i] and i != k)]
        padding = a[:, -1:].expand(-1, a.shape[1] - len(keep), -1)
        cases[f"only piece {k} ({tokenizer.tokenize(f'a {colour}')[k]})"] = torch.cat([a[:, keep], padding], 1)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter] = {}
    for c, (name, text) in enumerate(cases.items()):
        paths = []
        for r in range(repeats):
            sampler = make_scheduler(scheduler.config, "learned", render.steps, "cpu")
            gen = torch.Generator().manual_seed(1000 + r)  # the same noise in every case
            images = sample_base(unet, sampler, text, texts.stack([""] * len(text)), render.guidance, gen)
            for i, image in enumerate(to_pil(images)):
                paths.append(out / f"case{c}-{r}-{i}.png")
                image.save(paths[-1])
        counts[name] = Counter(read["colour"] for read in read_images(paths))
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="probe", required=True)
    lp = sub.add_parser("loss")
    lp.add_argument("--subject", type=Path, action="append", required=True, help="a `world subject` folder")
    lp.add_argument("--draws", type=int, default=16, help="(timestep, noise) draws per photo")
    pp = sub.add_parser("pieces")
    pp.add_argument("--colour", required=True)
    pp.add_argument("--other", required=True, help="a colour with as many pieces")
    pp.add_argument("--class-noun", required=True)
    pp.add_argument("--out", type=Path, required=True)
    pp.add_argument("--repeats", type=int, default=4, help="renders per context and case")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.probe == "loss":
        for subject in a.subject:
            colour = json.loads((subject / "subject.json").read_text())["colour"]
            rows = loss_table(subject, a.draws)
            print(f"{subject.name} ({colour}), epsilon loss / 8x8-block x0 error, best first: "
                  + " | ".join(f"{w} {e:.5f} / {b:.5f}" for w, e, b in rows))
    else:
        for name, counts in piece_rates(a.colour, a.other, a.class_noun, a.out, a.repeats).items():
            read = ", ".join(f"{k} {v}" for k, v in counts.most_common())
            print(f"{name}: {a.colour} {counts[a.colour]}/{sum(counts.values())}; {read}")


if __name__ == "__main__":
    main()
