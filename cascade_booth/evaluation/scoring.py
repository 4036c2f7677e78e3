"""Score one subject: label generated images, embed everything once, apply the section 4.1 metrics.

Each generated image is labelled with a template ("a [V] dog in the snow") and a kind:

* ``instance``: a prompt with the identifier; counted in DINO, CLIP-I, CLIP-T and DIV.
* ``class``: a prompt without it ("a dog in the snow"); these are the PRES samples.

Labels come from the image's metadata (``template``, ``kind``, ``identifier``) when present, else
from matching the prompt against the expected templates (which also reveals the identifier), else
from a known identifier. CLIP-T compares each image with its prompt *without* the identifier (a rare
token means nothing to CLIP); reports record this as ``clip_t_text``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cascade_booth.evaluation import metrics
from cascade_booth.evaluation.inputs import GeneratedImage
from cascade_booth.evaluation.prompts import V
from cascade_booth.identifier import class_prompt

CLIP_T_TEXT = "prompt-without-identifier"
CLASS_KINDS = ("class", "prior", "class_prompt", "class-prompt")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    prompt: str
    template: str
    kind: str  # "instance" or "class"
    clip_text: str


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).rstrip(".")


def match_template(prompt: str, templates: Sequence[str]) -> tuple[str, str | None, str] | None:
    """Match a prompt against templates (case-insensitive): (template, identifier, kind) or None.

    "a xjy dog in the snow" matches "a [V] dog in the snow" as an instance prompt with identifier
    "xjy"; "a dog in the snow" matches it as the class prompt (identifier None).
    """
    norm = _normalize(prompt)
    for template in templates:
        pattern = re.escape(_normalize(template)).replace(re.escape(V), r"(\S+)")
        found = re.fullmatch(pattern, norm, flags=re.IGNORECASE)
        if found and found.groups():
            return template, found.group(1), "instance"
        if norm.casefold() == _normalize(class_prompt(template)).casefold():
            return template, None, "class"
    return None


def _with_identifier(prompt: str, identifier: str) -> str | None:
    pattern = rf"(?<!\S){re.escape(identifier)}(?!\S)"
    return re.sub(pattern, V, prompt, count=1) if re.search(pattern, prompt) else None


def _label(image: GeneratedImage, templates: Sequence[str], identifier: str | None) -> LabelledImage:
    meta = image.metadata
    template = meta.get("template") or meta.get("prompt_template")
    kind = str(meta.get("kind", "")).lower() or None
    ident = meta.get("identifier") or identifier
    if not isinstance(template, str) or not template.strip():
        template = None
        if V in image.prompt:
            template = image.prompt
        elif (matched := match_template(image.prompt, templates)) is not None:
            template, _, matched_kind = matched
            kind = kind or matched_kind
        elif ident and (replaced := _with_identifier(image.prompt, ident)) is not None:
            template = replaced
    if template is None:  # unknown prompt and identifier: count it as an instance prompt
        template, kind = image.prompt, kind or "instance"
    kind = "class" if kind in CLASS_KINDS or (kind is None and V not in template) else "instance"
    group = class_prompt(template) if kind == "class" and V in template else template
    return LabelledImage(path=image.path, prompt=image.prompt, template=group, kind=kind,
                         clip_text=class_prompt(template))


def infer_identifier(images: Sequence[GeneratedImage], templates: Sequence[str]) -> str | None:
    """The identifier most prompts use, found by matching them against the templates."""
    found = Counter()
    for image in images:
        ident = image.metadata.get("identifier")
        matched = match_template(image.prompt, templates)
        if isinstance(ident, str) and ident:
            found[ident] += 1
        elif matched is not None and matched[1]:
            found[matched[1]] += 1
    return found.most_common(1)[0][0] if found else None


def label_images(images: Sequence[GeneratedImage], templates: Sequence[str],
                 identifier: str | None = None) -> tuple[list[LabelledImage], str | None]:
    """Label every image; returns the labels and the identifier used (given or inferred)."""
    identifier = identifier or infer_identifier(images, templates)
    return [_label(image, templates, identifier) for image in images], identifier


@dataclass
class Embeddings:
    """Everything the metrics need, embedded once (rows follow ``labels`` / ``real_paths``)."""

    gen_dino: torch.Tensor
    gen_clip: torch.Tensor
    text_clip: torch.Tensor  # one row per generated image (its clip_text)
    real_dino: torch.Tensor
    real_clip: torch.Tensor


def embed_all(labels: Sequence[LabelledImage], real_paths: Sequence[Path], dino, clip,
              batch_size: int = 16) -> Embeddings:
    """Run the extractors over generated and real images and the unique prompt texts."""
    gen_paths = [label.path for label in labels]
    texts = sorted({label.clip_text for label in labels})
    text_rows = dict(zip(texts, clip.embed_texts(texts, batch_size=batch_size), strict=True))
    return Embeddings(
        gen_dino=dino.embed_images(gen_paths, batch_size=batch_size),
        gen_clip=clip.embed_images(gen_paths, batch_size=batch_size),
        text_clip=torch.stack([text_rows[label.clip_text] for label in labels]),
        real_dino=dino.embed_images(list(real_paths), batch_size=batch_size),
        real_clip=clip.embed_images(list(real_paths), batch_size=batch_size),
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _prompt_row(template: str, kind: str, rows: list[int], emb: Embeddings, per_image: list[dict]) -> dict:
    index = torch.tensor(rows)
    div = metrics.mean_pairwise_distance(emb.gen_dino[index]) if len(rows) >= 2 else None
    return {"template": template, "kind": kind, "n_images": len(rows),
            "dino": _mean([per_image[i]["dino"] for i in rows]),
            "clip_i": _mean([per_image[i]["clip_i"] for i in rows]),
            "clip_t": _mean([per_image[i]["clip_t"] for i in rows]), "div": div}


def score(labels: Sequence[LabelledImage], emb: Embeddings) -> dict:
    """Per-image, per-prompt and subject-level metrics from precomputed embeddings."""
    dino_each = metrics.per_image_similarity(emb.gen_dino, emb.real_dino)
    clip_each = metrics.per_image_similarity(emb.gen_clip, emb.real_clip)
    text_each = metrics.paired_cosine(emb.text_clip, emb.gen_clip)
    per_image = [{"path": str(label.path), "prompt": label.prompt, "template": label.template,
                  "kind": label.kind, "clip_text": label.clip_text, "dino": float(dino_each[i]),
                  "clip_i": float(clip_each[i]), "clip_t": float(text_each[i])}
                 for i, label in enumerate(labels)]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault((label.kind, label.template), []).append(i)
    per_prompt = [_prompt_row(template, kind, rows, emb, per_image)
                  for (kind, template), rows in groups.items()]
    inst = [i for i, label in enumerate(labels) if label.kind == "instance"]
    cls = [i for i, label in enumerate(labels) if label.kind == "class"]
    return {"per_image": per_image, "per_prompt": per_prompt,
            "summary": _summary(inst, cls, groups, emb), "real_images": _real_row(emb)}


def _summary(inst: list[int], cls: list[int], groups: dict, emb: Embeddings) -> dict:
    summary = {"n_instance_images": len(inst), "n_class_images": len(cls),
               "n_real_images": len(emb.real_dino),
               "dino": None, "clip_i": None, "clip_t": None, "div": None, "pres": None}
    if inst:
        index = torch.tensor(inst)
        summary["dino"] = metrics.dino_score(emb.gen_dino[index], emb.real_dino)
        summary["clip_i"] = metrics.clip_i_score(emb.gen_clip[index], emb.real_clip)
        summary["clip_t"] = metrics.clip_t_score(emb.text_clip[index], emb.gen_clip[index])
        div_groups = [emb.gen_dino[torch.tensor(rows)]
                      for (kind, _), rows in groups.items() if kind == "instance"]
        if any(len(g) >= 2 for g in div_groups):
            summary["div"] = metrics.diversity(div_groups)
    if cls:
        summary["pres"] = metrics.pres_score(emb.gen_dino[torch.tensor(cls)], emb.real_dino)
    return summary


def _real_row(emb: Embeddings) -> dict:
    if len(emb.real_dino) < 2:
        return {"dino": None, "clip_i": None, "n": len(emb.real_dino)}
    return {**metrics.real_images_row(emb.real_dino, emb.real_clip), "n": len(emb.real_dino)}
