"""Evaluate one subject end to end, with extractors loaded by the caller (so a sweep loads them once)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cascade_booth.errors import InputError
from cascade_booth.evaluation.inputs import GeneratedImage, list_subject_images
from cascade_booth.evaluation.prompts import LIVE_SUBJECTS, SUBJECTS, is_live_class, resolve_prompts
from cascade_booth.evaluation.report import build_report
from cascade_booth.evaluation.scoring import CLIP_T_TEXT, embed_all, label_images, score
from cascade_booth.versions import versions


def resolve_class_noun(class_noun: str | None, subject_dir: Path, images: Sequence[GeneratedImage]) -> str:
    """--class-noun, else the renders' ``class_noun`` metadata, else the DreamBench subject's class."""
    if class_noun and class_noun.strip():
        return class_noun.strip()
    found = Counter(img.metadata["class_noun"] for img in images
                    if isinstance(img.metadata.get("class_noun"), str) and img.metadata["class_noun"].strip())
    if found:
        return found.most_common(1)[0][0].strip()
    if subject_dir.name in SUBJECTS:
        return SUBJECTS[subject_dir.name]
    raise InputError(f"no class noun for subject folder {subject_dir}: "
                     "pass --class-noun (e.g. --class-noun dog)")


def coverage(templates: Sequence[str], labelled_templates: Sequence[tuple[str, str]]) -> dict:
    """Which expected prompts have instance images, which are missing, which were not expected."""
    seen = {template for kind, template in labelled_templates if kind == "instance"}
    return {"expected_templates": list(templates),
            "missing_templates": [t for t in templates if t not in seen],
            "extra_templates": sorted(seen - set(templates))}


def evaluate_subject(generated: Sequence[GeneratedImage], subject_dir: str | Path, dino, clip, *,
                     class_noun: str | None = None, prompts: str = "dreambench",
                     identifier: str | None = None, batch_size: int = 16,
                     subject_name: str | None = None, settings: dict | None = None,
                     templates: Sequence[str] | None = None) -> dict:
    """Score generated images of one subject against its real images; returns the report dict.

    ``dino`` / ``clip`` are :class:`DinoExtractor` / :class:`ClipExtractor` (or objects with the same
    ``embed_images`` / ``embed_texts`` / ``describe`` methods). ``prompts`` is ``"dreambench"`` or a
    prompts file; ``settings`` adds entries to the report's settings (e.g. the run folder).
    ``templates`` gives the expected ``[V]`` prompts directly (e.g. read from a DreamBench checkout);
    then ``prompts`` only names their source in the report.
    """
    if not generated:
        raise InputError("no generated images to evaluate")
    subject_dir = Path(subject_dir)
    real_paths = list_subject_images(subject_dir)
    noun = resolve_class_noun(class_noun, subject_dir, generated)
    name = subject_name or subject_dir.name
    live = name in LIVE_SUBJECTS if name in SUBJECTS and not class_noun else is_live_class(noun)
    if templates is None:
        templates, source = resolve_prompts(prompts, noun, live=live)
    elif not templates:
        raise InputError(f"subject {name}: no expected prompts")
    else:
        templates, source = list(templates), prompts
    labels, ident = label_images(generated, templates, identifier)
    scores = score(labels, embed_all(labels, real_paths, dino, clip, batch_size=batch_size))
    scores["real_images"]["paths"] = [str(p) for p in real_paths]
    report_settings = {
        "subject": name, "subject_dir": str(subject_dir), "class_noun": noun, "identifier": ident,
        "prompts": source, "live_subject": live, "batch_size": batch_size, "clip_t_text": CLIP_T_TEXT,
        "dino_feature": "CLS token of last_hidden_state", "n_generated": len(generated),
        "versions": versions(), **(settings or {}),
    }
    models = {"dino": dino.describe(), "clip": clip.describe()}
    return build_report(name, scores, report_settings, models,
                        coverage(templates, [(label.kind, label.template) for label in labels]))
