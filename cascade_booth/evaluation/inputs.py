"""Find the images to evaluate: generated PNGs with their prompts, and a subject's real images.

A generated image ``NAME.png`` carries its prompt either in a sidecar ``NAME.json`` or in a PNG text
chunk, as a ``prompt`` field (a text chunk may also hold a JSON object with a ``prompt`` field).
Optional fields we use when present: ``template`` / ``prompt_template`` (the prompt with ``[V]``),
``identifier``, ``kind`` (``"instance"`` or ``"class"``), ``class_noun``, ``stage``, ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cascade_booth.errors import InputError
from cascade_booth.paths import path_problem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RENDERS_DIR = "renders"


@dataclass(frozen=True)
class GeneratedImage:
    """One generated image and the metadata found for it (``prompt`` is always set)."""

    path: Path
    prompt: str
    metadata: dict = field(default_factory=dict)


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_image_metadata(path: str | Path) -> dict:
    """Metadata of a generated image: its sidecar JSON if any, else its PNG text chunks ({} if none)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        data = _json_object(sidecar.read_text(encoding="utf-8"))
        if data is None:
            raise InputError(f"{sidecar}: not a JSON object (expected a sidecar with a 'prompt' field)")
        return data
    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", None) or image.info)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read image ({err})") from err
    if isinstance(chunks.get("prompt"), str):
        return {key: value for key, value in chunks.items() if isinstance(value, str)}
    for value in chunks.values():
        data = _json_object(value) if isinstance(value, str) else None
        if data is not None and "prompt" in data:
            return data
    return {}


def _image_files(folder: Path, recursive: bool, suffixes=(".png",)) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in suffixes)


def discover_generated(folder: str | Path,
                       recursive: bool = False) -> tuple[list[GeneratedImage], list[Path]]:
    """PNGs in ``folder`` with a prompt -> (images, skipped files without a prompt).

    Raises InputError when the folder is missing or holds no PNG with a prompt.
    """
    folder = Path(folder)
    if problem := path_problem(folder, "folder"):
        raise InputError(f"generated images folder {folder}: {problem}")
    images, skipped = [], []
    for path in _image_files(folder, recursive):
        metadata = read_image_metadata(path)
        prompt = metadata.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            images.append(GeneratedImage(path=path, prompt=prompt.strip(), metadata=metadata))
        else:
            skipped.append(path)
    if not images:
        what = f"{len(skipped)} PNG(s) but none has" if skipped else "no PNG images with"
        raise InputError(f"generated images folder {folder}: {what} a 'prompt' "
                         "(in a sidecar NAME.json or a PNG text chunk)")
    return images, skipped


def final_stage_only(images: list[GeneratedImage]) -> list[GeneratedImage]:
    """Keep the images of the last cascade stage when renders record a numeric ``stage``."""
    stages = [img.metadata.get("stage") for img in images]
    numeric = [s for s in stages if isinstance(s, int | float) and not isinstance(s, bool)]
    if not numeric:
        return images
    last = max(numeric)
    return [img for img, stage in zip(images, stages, strict=True) if stage == last or stage is None]


def discover_run(run_dir: str | Path) -> tuple[list[GeneratedImage], list[Path]]:
    """Generated images of a run folder: PNGs anywhere under ``RUN/renders/`` (final stage only)."""
    run_dir = Path(run_dir)
    if problem := path_problem(run_dir, "folder"):
        raise InputError(f"run folder {run_dir}: {problem}")
    renders = run_dir / RENDERS_DIR
    if not renders.is_dir():
        raise InputError(f"run folder {run_dir}: has no {RENDERS_DIR}/ folder (render samples first, "
                         "or pass --generated DIR)")
    images, skipped = discover_generated(renders, recursive=True)
    return final_stage_only(images), skipped


def list_subject_images(folder: str | Path) -> list[Path]:
    """The subject's real images (PNG/JPEG/WebP/BMP directly in ``folder``); InputError if none."""
    folder = Path(folder)
    if problem := path_problem(folder, "folder"):
        raise InputError(f"subject folder {folder}: {problem}")
    paths = _image_files(folder, recursive=False, suffixes=IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"subject folder {folder}: no images (expected {', '.join(IMAGE_SUFFIXES)})")
    return paths
