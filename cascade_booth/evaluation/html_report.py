"""A self-contained HTML evaluation page: metric tables and per-prompt image grids.

Images are embedded as base64 JPEG thumbnails, so the single file can be moved or mailed. The markup
is XHTML-compatible (every element closed, attributes quoted, text escaped).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path

from PIL import Image

from cascade_booth.evaluation.paper import METRIC_KEYS, PAPER, PAPER_PRIOR_ABLATION, fmt, table1_rows
from cascade_booth.evaluation.preprocess import load_image

THUMBNAIL = 160
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.ours td { font-weight: bold; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 1.5em; }
figure { margin: 0; width: 160px; font-size: 0.75em; }
figure img { width: 160px; height: 160px; object-fit: contain; background: #eee; }
.missing { width: 160px; height: 160px; background: #eee; display: flex; align-items: center; }
"""


def thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of an image file (None if it cannot be read)."""
    try:
        image = load_image(path)
    except Exception:  # a missing or broken image becomes a placeholder, not a failed report
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], ours_rows: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        cls = ' class="ours"' if index in ours_rows else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(path: str, caption: str) -> str:
    uri = thumbnail_data_uri(path)
    title = escape(Path(path).name, quote=True)
    picture = (f'<img src="{uri}" alt="{title}" title="{title}" />' if uri
               else f'<div class="missing">missing: {escape(Path(path).name)}</div>')
    return f"<figure>{picture}<figcaption>{escape(caption)}</figcaption></figure>"


def _grids(report: dict) -> list[str]:
    parts = []
    for subject, row in report["per_subject"].items():
        real_paths = (row.get("real_images") or {}).get("paths", [])
        parts.append(f"<h2>{escape(subject)}</h2>")
        if real_paths:
            parts.append("<h3>Real images</h3><div class=\"grid\">"
                         + "".join(_figure(p, Path(p).name) for p in real_paths) + "</div>")
        for prompt in (p for p in report["per_prompt"] if p["subject"] == subject):
            key = (subject, prompt["template"], prompt["kind"])
            images = [i for i in report["per_image"] if (i["subject"], i["template"], i["kind"]) == key]
            stats = (f"{prompt['kind']}; DINO {fmt(prompt.get('dino'))}, CLIP-I {fmt(prompt.get('clip_i'))}, "
                     f"CLIP-T {fmt(prompt.get('clip_t'))}, DIV {fmt(prompt.get('div'))}")
            parts.append(f"<h3>{escape(prompt['template'])} <small>({escape(stats)})</small></h3>")
            figures = [_figure(i["path"], f"DINO {fmt(i['dino'])} · CLIP-T {fmt(i['clip_t'])}")
                       for i in images]
            parts.append('<div class="grid">' + "".join(figures) + "</div>")
    return parts


def _benchmark(report: dict) -> list[str]:
    bench = report.get("benchmark")
    if not bench:
        return []
    links = ", ".join(f'<a href="subjects/{escape(n, quote=True)}/report.html">{escape(n)}</a>'
                      for n in bench["evaluated"])
    parts = ["<h2>DreamBench coverage</h2>",
             f"<p>{len(bench['evaluated'])} of {len(bench['selected'])} selected subjects evaluated "
             f"(DreamBench has {bench['n_subjects']}); overall metrics are means over them. "
             f"Per-subject reports: {links}.</p>"]
    if bench.get("missing"):
        parts.append(_table(("Missing subject", "Why"), list(bench["missing"].items())))
    return parts


def to_html(report: dict, images: bool = True) -> str:
    """Render a report dict as one self-contained HTML page (``images``: include the image grids)."""
    settings, models, overall = report["settings"], report.get("models", {}), report["overall"]
    table1 = table1_rows(report)
    ablation = [(f"{m} (paper)", fmt(p), fmt(d) + " (LPIPS)") for m, p, d in PAPER_PRIOR_ABLATION]
    ablation.append(("cascade-booth (ours)", fmt(overall.get("pres")), fmt(overall.get("div"))))
    subjects = [(name, *(fmt(row.get(k)) for k in METRIC_KEYS), str(row.get("n_instance_images", 0)))
                for name, row in report["per_subject"].items()]
    model_rows = [(key, str(value.get("id", "?")), value.get("class", "")) for key, value in models.items()]
    setting_rows = [(key, str(value)) for key, value in settings.items()
                    if not isinstance(value, dict | list)]
    body = [
        "<h1>cascade-booth evaluation</h1>",
        f"<p>Metrics of {escape(PAPER)}, section 4.1. DIV is "
        f"<code>{escape(str(settings.get('div_metric')))}</code> (the paper uses LPIPS). "
        "PRES: lower is better.</p>",
        *_benchmark(report),
        "<h2>Table 1</h2>",
        _table(("Method", "DINO", "CLIP-I", "CLIP-T"), table1, ours_rows=(len(table1) - 1,)),
        "<h2>Prior preservation and diversity</h2>",
        _table(("Method", "PRES", "DIV"), ablation, ours_rows=(len(ablation) - 1,)),
        "<h2>Per subject</h2>",
        _table(("Subject", "DINO", "CLIP-I", "CLIP-T", "PRES", "DIV", "images"), subjects),
        "<h2>Models</h2>", _table(("Role", "Model", "Class"), model_rows),
        "<h2>Settings</h2>", _table(("Setting", "Value"), setting_rows),
        *(_grids(report) if images else []),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\" />"
            "<title>cascade-booth evaluation</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
