"""Read a world run's renders back: does "a [V] vase in the snow" show *that* vase, in the snow?

The paper's claims (Ruiz et al. 2022): the identifier binds the subject (section 3.1, Fig. 1), and
class-specific prior preservation keeps the class prior (section 3.3, "language drift"). On the world
both can be read off the images themselves: the attribute net (``world/models/attributes``, trained
on ground-truth renders) names each render's class, colour, pattern and context, and the subject's
own attributes come from its ``subject.json``. Neither colour nor pattern is named in the prompts, so
a render that shows them got them from ``[V]``.

Figures (fractions of renders):
- ``instance``: "a [V] <class> <context>" for every non-plain context; colour / pattern = the
  subject's, context / class = the prompt's.
- ``class``: the same prompts without ``[V]`` from the personalized cascade (drift), beside
  ``pretrained``: the same class prompts from the shipped cascade (the prior that must be kept).
  ``colour_drift`` = class-prompt rate of the subject's colour, personalized minus pretrained.
- ``named`` (``named=True`` only): the pretrained cascade told the subject's colour and pattern in words
  ("a green clock with stripes in the snow"): what the model draws at best when nothing is learned, the
  reference for the ``instance`` rates.
- ``dino`` (per kind): mean world-DINO cosine similarity of the renders to the subject's photos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cascade_booth.world.vocab import CONTEXTS, caption

ATTRIBUTES_DIR = Path(__file__).parent / "models" / "attributes"


@dataclass(frozen=True)
class Subject:
    """What a ``world subject`` photo set shows (its ``subject.json``)."""

    cls: str
    colour: str
    pattern: str

    @classmethod
    def load(cls, folder: Path) -> Subject:
        data = json.loads((folder / "subject.json").read_text(encoding="utf-8"))
        return cls(data["class"], data["colour"], data["pattern"])


def instance_prompts(cls: str, contexts: list[str] | None = None) -> list[str]:
    """'a [V] <class> <context>' for each context (default: every non-plain one, the recontextualization prompts)."""
    contexts = contexts or [ctx for ctx in CONTEXTS if ctx != "plain"]
    return [caption(f"[V] {cls}", None, None, ctx) for ctx in contexts]


def context_of(prompt: str) -> str:
    """The context label whose phrase ends ``prompt`` ("plain" if none)."""
    return next((k for k, phrase in CONTEXTS.items() if phrase and prompt.endswith(phrase)), "plain")


@lru_cache(maxsize=1)
def _attribute_net():
    from cascade_booth.world.evaluators import load_attributes

    return load_attributes(ATTRIBUTES_DIR)


@lru_cache(maxsize=1)
def _dino():
    from cascade_booth.evaluation.extractors import DinoExtractor

    return DinoExtractor.from_pretrained(str(ATTRIBUTES_DIR.parent / "dino"), device="cpu")


def read_images(paths: list[Path]) -> list[dict[str, str]]:
    """The attribute net's reading of each PNG (class, colour, pattern, context).

    Class, colour and context are read from the image brought to stage one's 32 px, where the net's
    held-out accuracy is 99.7 / 100 / 100 % (the model card) and where a generated image's high-frequency
    artifacts (an SR model's blotches) do not mislead it; the pattern, invisible at 32 px, from the image
    at 128 px (stage two's output size).
    """
    from cascade_booth.images import to_tensor

    model = _attribute_net()
    images = [Image.open(p).convert("RGB") for p in paths]
    low = torch.stack([to_tensor(im, 32) for im in images])
    full = torch.stack([to_tensor(im, 128) for im in images])  # the net's input size (stage two's output)
    reads: list[dict[str, str]] = []
    for start in range(0, len(images), 64):
        coarse, fine = model.read(low[start:start + 64]), model.read(full[start:start + 64])
        reads += [{**c, "pattern": f["pattern"]} for c, f in zip(coarse, fine, strict=True)]
    return reads


def dino_to_subject(groups: dict[str, list[Path]], subject_dir: Path) -> dict[str, float]:
    """Per group of renders: mean cosine similarity of the world DINO embeddings to the subject's photos (the
    paper's DINO subject fidelity, section 4.1, with ``world/models/dino``, trained so one design is close)."""
    import torch.nn.functional as F

    dino = _dino()  # loaded once per process: score_run reads back up to three kinds of renders

    def embed(files: list[Path]) -> torch.Tensor:
        return F.normalize(dino.embed_images([Image.open(f).convert("RGB") for f in files], batch_size=32), dim=-1)

    photos = embed(sorted(p for p in subject_dir.iterdir() if p.suffix == ".png"))
    return {kind: float((embed(paths) @ photos.T).mean()) for kind, paths in groups.items()}


def _rate(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


def renders_by_kind(paths: list[Path]) -> dict[str, list[tuple[Path, dict]]]:
    """Renders with their JSON sidecars, grouped by the sidecar's ``kind`` ("instance" / "class"; none: "instance"),
    in order."""
    groups: dict[str, list[tuple[Path, dict]]] = {}
    for p in paths:
        meta = json.loads(p.with_suffix(".json").read_text(encoding="utf-8"))
        groups.setdefault(meta.get("kind", "instance"), []).append((p, meta))
    return groups


def clip_text(meta: dict) -> str:
    """The text a render's CLIP-T is measured against: its prompt without the identifier (section 4.1; as
    ``cascade_booth.evaluation.scoring`` does). A cascade-booth sidecar's ``prompt`` is the *filled* prompt, so
    its ``prompt_template`` is read first; other tools' sidecars carry ``[V]`` in ``prompt`` itself."""
    from cascade_booth.identifier import class_prompt

    return class_prompt(meta.get("prompt_template") or meta["prompt"])


def _figures(groups: dict[str, list[tuple[Path, dict]]], subject: Subject) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, rows in sorted(groups.items()):
        reads = read_images([p for p, _ in rows])
        out[kind] = {
            "images": len(rows),
            "colour": _rate([r["colour"] == subject.colour for r in reads]),
            "pattern": _rate([r["pattern"] == subject.pattern for r in reads]),
            "context": _rate([r["context"] == context_of(m["prompt"]) for (_, m), r in zip(rows, reads, strict=True)]),
            "class": _rate([r["class"] == subject.cls for r in reads]),
        }
    return out


def score_renders(paths: list[Path], subject: Subject) -> dict[str, dict[str, float]]:
    """Per kind ("instance" / "class"): read-back rates from rendered PNGs and their JSON sidecars."""
    return _figures(renders_by_kind(paths), subject)


def read_back(pngs: list[Path], subject_dir: Path) -> dict[str, dict[str, float]]:
    """Per kind of render (its sidecar's ``kind``): the attribute net's rates and world DINO to the subject's photos."""
    groups = renders_by_kind(pngs)
    figures = _figures(groups, Subject.load(subject_dir))
    for kind, value in dino_to_subject({k: [p for p, _ in rows] for k, rows in groups.items()}, subject_dir).items():
        figures[kind]["dino"] = value
    return figures


def rendered_pngs(paths: list[Path]) -> list[Path]:
    """The renders among ``render_run``'s paths (not the grid)."""
    return [p for p in paths if p.name != "grid.png" and p.suffix == ".png"]


@dataclass
class Scored:
    """The figures and the rendered PNGs of each kind ("instance", "class", "pretrained"), in prompt order."""

    figures: dict
    renders: dict[str, list[Path]]


def score_run(run: Path, subject_dir: Path, out: Path, sr: bool = True, num_images: int = 4,
              steps: int | None = None, seed: int = 0, contexts: list[str] | None = None,
              sr_strength: float | None = None, guidance: float | None = None, named: bool = False) -> Scored:
    """Render the instance and class prompts through the run and the class prompts through the
    pretrained cascade (same seeds), read all of them back (see the module docstring). ``named``: also the
    pretrained cascade with the subject's colour and pattern in the prompt."""
    from cascade_booth.config import load_config
    from cascade_booth.runner import RenderRequest, render_run

    subject = Subject.load(subject_dir)
    prompts = instance_prompts(subject.cls, contexts)
    quiet = lambda _m: None  # noqa: E731 - the fallbacks are expected here
    mine = rendered_pngs(render_run(RenderRequest(
        run=run, prompts=prompts, out=out / "personalized", num_images=num_images, seed=seed, steps=steps, sr=sr,
        class_prompts=True, warn=quiet, sr_strength=sr_strength, guidance=guidance)))

    def pretrained(kind: str, texts: list[str]) -> list[Path]:  # the shipped cascade, same seeds and sampling
        return rendered_pngs(render_run(RenderRequest(
            run=None, config=load_config("world"), prompts=texts, out=out / kind, num_images=num_images,
            seed=seed, steps=steps, sr=sr, warn=quiet, sr_strength=sr_strength, guidance=guidance)))

    class_prompts = [p.replace("[V] ", "") for p in prompts]
    renders = {kind: [p for p, _ in rows] for kind, rows in renders_by_kind(mine).items()}
    renders["pretrained"] = pretrained("pretrained", class_prompts)
    if named:
        renders["named"] = pretrained("named", [caption(subject.cls, subject.colour, subject.pattern, context_of(p))
                                                for p in class_prompts])
    figures: dict = read_back(mine, subject_dir)
    for kind in [k for k in ("pretrained", "named") if k in renders]:  # their sidecars say "instance"
        figures[kind] = read_back(renders[kind], subject_dir)["instance"]
    figures["colour_drift"] = figures["class"]["colour"] - figures["pretrained"]["colour"]
    figures["subject"] = {"class": subject.cls, "colour": subject.colour, "pattern": subject.pattern}
    figures["size"] = 128 if sr else 32
    return Scored(figures, renders)


LABELS = {"instance": "a [V] <class> <context>", "class": "a <class> <context>, personalized",
          "pretrained": "a <class> <context>, pretrained"}
NAMED_LABEL = "colour and pattern named, pretrained"  # world score --named only


def summary_lines(figures: dict) -> list[str]:
    """What ``demo`` and ``world score`` print: the subject, one line per kind of render, the drift."""
    s = figures["subject"]
    lines = [f"subject: {s['colour']} {s['class']}, pattern {s['pattern']} (named in no prompt); "
             f"read back at {figures['size']} px"]
    for kind, label in (LABELS | {"named": NAMED_LABEL}).items():
        if kind not in figures:  # "named" only when asked for
            continue
        f = figures[kind]
        lines.append(f"  {label:36s} {f['images']:3d} images: DINO to the photos {f['dino']:+.2f}  subject's colour "
                     f"{f['colour']:4.0%}  pattern {f['pattern']:4.0%}  context {f['context']:4.0%}  "
                     f"class {f['class']:4.0%}")
    lines.append(f"  colour drift of the class prompts (personalized - pretrained): {figures['colour_drift']:+.2f}")
    return lines
