"""Rendered images on disk: PNG text chunks, JSON sidecars and contact-sheet grids, all written atomically.

Every render carries what made it (paper section 4.1 evaluates generated images against their
prompts, so the prompt must travel with the image): the filled prompt as a ``prompt`` text chunk
and sidecar field (what ``cascade_booth.evaluation`` reads), the ``[V]`` template, seed, models,
steps, guidance and noise level. Chunks are iTXt (UTF-8), so any prompt survives. A render never
replaces an earlier one: names already taken in the output folder send the call to a new subfolder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cascade_booth import __version__
from cascade_booth.diskspace import WriteError, failed
from cascade_booth.runfolder import atomic_path, write_json

if TYPE_CHECKING:
    from cascade_booth.renderplan import Plan

STAGE_NUMBER = {"base": 1, "sr": 2, "upscale": 3}


def render_meta(plan: Plan, i: int, j: int, image: Image.Image) -> dict[str, Any]:
    """What an image's PNG chunks and sidecar record (``prompt`` is the filled prompt).

    ``stage`` is the cascade stage that made the image (1: 64 px, 2: SR, 3: x4 upscaler), the number
    ``cascade_booth.evaluation`` uses to keep final-stage images only.
    """
    stages = [s for s in (plan.base, plan.sr) if s is not None]
    last = "upscale" if plan.upscaler is not None else stages[-1].name
    return {
        "prompt": plan.prompts[i], "prompt_template": plan.templates[i],
        "kind": plan.kinds[i] if plan.kinds else "instance",
        "identifier": plan.meta["identifier"], "class_noun": plan.meta.get("class_noun"), "seed": plan.seed + j,
        "prompt_index": i, "image_index": j, "stage": STAGE_NUMBER[last], "stage_name": last,
        "width": image.width, "height": image.height,
        "models": {s.name: s.model for s in stages} | ({"upscaler": str(plan.upscaler)} if plan.upscaler else {}),
        "weights": {s.name: None if s.weights is None else str(s.weights) for s in stages},
        "steps": {s.name: s.steps for s in stages}, "guidance": {s.name: s.guidance for s in stages},
        "variance": {s.name: s.variance for s in stages},
        "variance_type": {s.name: s.variance_type for s in stages},
        "noise_level": None if plan.sr is None else plan.sr.noise_level,
        "sr_start": None if plan.sr is None else plan.sr.start,
        "sr_strength": None if plan.sr is None else plan.sr.strength,
        "run": None if plan.run is None else str(plan.run.path), "cascade_booth": __version__,
    }


def _chunk_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def png_info(meta: dict[str, Any]) -> PngInfo:
    """One iTXt chunk per top-level field: strings as-is, everything else as JSON."""
    info = PngInfo()
    for key, value in meta.items():
        info.add_itxt(key, _chunk_text(value))
    return info


def save_png(image: Image.Image, path: Path, meta: dict[str, Any], sidecar: bool = True,
             overwrite: bool = True) -> Path:
    """Write ``path`` (PNG with ``meta`` as text chunks) and, if asked, ``path.with_suffix('.json')``."""
    with atomic_path(path, overwrite) as tmp:
        image.save(tmp, format="PNG", pnginfo=png_info(meta))
    if sidecar:
        write_json(path.with_suffix(".json"), {"image": path.name, **meta}, overwrite)
    return path


def render_name(prompt_index: int, seed: int, image_index: int) -> str:
    """``p<prompt>-seed<seed>-<image>.png``: sorts by prompt, and says which noise an image started from."""
    return f"p{prompt_index:03d}-seed{seed}-{image_index:02d}.png"


def free_folder(out: Path, names: list[str]) -> Path:
    """``out``, or if it holds any of ``names`` already, a new ``out/render-N`` (created here, so it is ours)."""
    if not any((out / name).exists() for name in names):
        return out
    number = 2
    while True:
        folder = out / f"render-{number}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1
        except OSError as err:
            raise WriteError(failed(folder, err), err) from None


def write_renders(out: Path, rows: list[list[Image.Image]], metas: list[list[dict[str, Any]]]) -> list[Path]:
    """Save every image (chunks + sidecar) under its ``render_name``; add ``grid.png`` when there are several.

    Nothing is overwritten: when ``out`` holds one of these names already, all go to ``free_folder``.
    """
    pairs = [(img, m) for row, ms in zip(rows, metas, strict=True) for img, m in zip(row, ms, strict=True)]
    names = [render_name(m["prompt_index"], m["seed"], m["image_index"]) for _, m in pairs]
    taken = [*names, *(Path(n).with_suffix(".json").name for n in names), *(["grid.png"] if len(names) > 1 else [])]
    folder = free_folder(Path(out), taken)
    paths = [save_png(img, folder / name, m, overwrite=False) for (img, m), name in zip(pairs, names, strict=True)]
    if len(paths) > 1:
        with atomic_path(folder / "grid.png", overwrite=False) as tmp:
            grid(rows).save(tmp, format="PNG")
        paths.append(folder / "grid.png")
    return paths


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt and iTXt)."""
    with Image.open(path) as img:
        img.load()
        return dict(getattr(img, "text", {}))


def grid(rows: list[list[Image.Image]], pad: int = 2, background: tuple[int, int, int] = (255, 255, 255)
         ) -> Image.Image:
    """Paste ``rows`` (one row per prompt, one column per seed) into one image; cells keep their size."""
    cell_w = max(img.width for row in rows for img in row)
    cell_h = max(img.height for row in rows for img in row)
    cols = max(len(row) for row in rows)
    sheet = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, len(rows) * cell_h + (len(rows) + 1) * pad),
                      background)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(img.convert("RGB"), (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return sheet
