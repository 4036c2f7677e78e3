"""Rendered images on disk: PNG text chunks, JSON sidecars and contact-sheet grids, all written atomically.

Every render carries what made it (paper section 4.1 evaluates generated images against their
prompts, so the prompt must travel with the image): the filled prompt as a ``prompt`` text chunk
and sidecar field (what ``cascade_booth.evaluation`` reads), the ``[V]`` template, seed, models,
steps, guidance and noise level. Chunks are iTXt (UTF-8), so any prompt survives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cascade_booth.runfolder import atomic_path, write_json


def _chunk_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def png_info(meta: dict[str, Any]) -> PngInfo:
    """One iTXt chunk per top-level field: strings as-is, everything else as JSON."""
    info = PngInfo()
    for key, value in meta.items():
        info.add_itxt(key, _chunk_text(value))
    return info


def save_png(image: Image.Image, path: Path, meta: dict[str, Any], sidecar: bool = True) -> Path:
    """Write ``path`` (PNG with ``meta`` as text chunks) and, if asked, ``path.with_suffix('.json')``."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=png_info(meta))
    if sidecar:
        write_json(path.with_suffix(".json"), {"image": path.name, **meta})
    return path


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
