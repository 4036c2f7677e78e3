"""The paper's numbers (Ruiz et al. 2022, section 4.1) and the lines that put ours beside them.

The lowest module of the reports: ``report`` (JSON, Markdown), ``html_report`` and the CLI's summary
all take the paper's rows and the metric formatting from here, so no figure is written twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

METRIC_KEYS = ("dino", "clip_i", "clip_t", "pres", "div")
METRIC_LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES", "div": "DIV"}
PAPER = "Ruiz et al. 2022, DreamBooth (arXiv 2208.12242)"
PAPER_TABLE1 = (
    ("Real Images", 0.774, 0.885, None),
    ("DreamBooth (Imagen)", 0.696, 0.812, 0.306),
    ("DreamBooth (Stable Diffusion)", 0.668, 0.803, 0.305),
)
"""Table 1 of the paper, section 4.1: (row, DINO, CLIP-I, CLIP-T)."""
PAPER_PRIOR_ABLATION = (("DreamBooth (Imagen), with prior preservation", 0.493, 0.391),
                        ("DreamBooth (Imagen), without prior preservation", 0.664, 0.371))
"""The paper's prior-preservation ablation: (row, PRES, DIV with LPIPS)."""
DEFAULT_DINO = "facebook/dino-vits16"
"""The paper's DINO (ViT-S/16): DINO score and PRES."""
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
"""The CLIP that scores CLIP-I and CLIP-T by default (ViT-B/32)."""
PAPER_REAL = {"dino": PAPER_TABLE1[0][1], "clip_i": PAPER_TABLE1[0][2]}
"""Table 1's "Real Images" row: the similarity among a subject's own photos."""


def fmt(value: object, digits: int = 3) -> str:
    """A metric for tables: 3 decimals, or an en dash when missing."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "–"


def metrics_line(values: Mapping[str, object]) -> str:
    """One line of metrics, "DINO 0.700  CLIP-I 0.800  ...", in ``METRIC_KEYS`` order, for those in ``values``."""
    return "  ".join(f"{METRIC_LABELS[key]} {fmt(values[key])}" for key in METRIC_KEYS if key in values)


def paper_rows() -> list[dict]:
    return [{"method": m, "dino": d, "clip_i": c, "clip_t": t} for m, d, c, t in PAPER_TABLE1]


def table1_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """Rows of our Table 1: the paper's three rows, our real-images row, our model."""
    overall = report["overall"]
    n = overall.get("n_subjects", 1)
    rows = [(f"{m} (paper)", fmt(d), fmt(c), fmt(t)) for m, d, c, t in PAPER_TABLE1]
    real = overall.get("real_images", {})
    rows.append((f"Real Images (ours, {n} subject{'s' if n != 1 else ''})", fmt(real.get("dino")),
                 fmt(real.get("clip_i")), "–"))
    rows.append(("cascade-booth (ours)", fmt(overall.get("dino")), fmt(overall.get("clip_i")),
                 fmt(overall.get("clip_t"))))
    return rows
