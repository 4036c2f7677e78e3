"""What ``cascade-booth demo`` shows: a picture (``demo.png``) and a one-file HTML report.

The picture has one column per context and three rows: "a [V] <class> <context>" from the
personalized cascade, the same prompt without ``[V]`` from the personalized cascade (the paper's
class prompt: does the class still look like any vase?), and the pretrained cascade's render of that
class prompt (the baseline), each with the same seed. The subject's photos sit on the left.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from PIL import Image

from cascade_booth.pngmeta import grid
from cascade_booth.runfolder import atomic_path
from cascade_booth.world.readback import LABELS, Scored, context_of

TILE = 128


def _tile(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST)


def picture(subject: Path, scored: Scored) -> Image.Image:
    """Rows: the subject's photos, then the three kinds of render (columns: contexts)."""
    photos = sorted(p for p in subject.glob("*.png"))
    width = len(scored.renders["instance"])
    rows = [[_tile(p) for p in photos[:width]]]
    rows += [[_tile(p) for p in scored.renders[kind]] for kind in LABELS]
    return grid(rows)


def _figures_table(figures: dict) -> str:
    head = "<tr><th>renders</th><th>images</th><th>DINO to the subject's photos</th><th>subject's colour</th>" \
           "<th>subject's pattern</th><th>context obeyed</th><th>class obeyed</th></tr>"
    rows = []
    for kind, label in LABELS.items():
        f = figures[kind]
        cells = "".join(f"<td>{100 * f[k]:.0f} %</td>" for k in ("colour", "pattern", "context", "class"))
        rows.append(f"<tr><td>{escape(label)}</td><td>{f['images']}</td><td>{f['dino']:.3f}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def to_html(figures: dict, picture_name: str, prompts: list[str]) -> str:
    s = figures["subject"]
    contexts = ", ".join(escape(context_of(p)) for p in prompts)
    return "\n".join([
        "<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"/><title>cascade-booth demo</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child{text-align:left}</style>",
        "</head><body>", "<h1>cascade-booth demo: the world cascade, personalized</h1>",
        f"<p>Subject: a {escape(s['colour'])} {escape(s['class'])}, pattern <b>{escape(s['pattern'])}</b>, "
        "a design the pretraining never drew. Neither its colour nor its pattern is named in any prompt: "
        "a render that shows them got them from the identifier [V].</p>",
        f"<p>Top row: the subject's photos. Then, per context ({contexts}):</p><ol>",
        *[f"<li>{escape(label)}</li>" for label in LABELS.values()], "</ol>",
        f"<p><img src=\"{escape(picture_name)}\" alt=\"demo renders\" style=\"image-rendering:pixelated\"/></p>",
        f"<h2>Subject fidelity (world DINO) and what the world's attribute net reads ({figures['size']} px)</h2>",
        "<p>The attribute net was trained on ground-truth renders only and can misread generated images: "
        "check its figures against the picture.</p>", _figures_table(figures),
        f"<p>The subject's colour in class-prompt renders, personalized minus pretrained (drift): "
        f"{figures['colour_drift']:+.2f}.</p>", "</body></html>", ""])


def write_report(out: Path, subject: Path, scored: Scored) -> tuple[Path, Path]:
    """``OUT/demo.png`` and ``OUT/report.html`` (written atomically); returns both paths."""
    png, html = out / "demo.png", out / "report.html"
    with atomic_path(png) as tmp:
        picture(subject, scored).save(tmp, format="PNG")
    prompts = [json.loads(p.with_suffix(".json").read_text())["prompt"] for p in scored.renders["instance"]]
    with atomic_path(html) as tmp:
        tmp.write_text(to_html(scored.figures, png.name, prompts), encoding="utf-8")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(scored.figures, indent=1) + "\n", encoding="utf-8")
    return png, html
