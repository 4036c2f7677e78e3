"""Evaluation reports: a JSON-able dict, a Markdown summary beside the paper's Table 1, and files.

``build_report`` wraps one subject's scores with settings and model ids; ``combine_reports`` merges
subjects (a sweep) with overall = mean over subjects, as the paper averages over its 30 subjects.
All files are written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from cascade_booth.evaluation.metrics import DIV_METRIC
from cascade_booth.evaluation.paper import METRIC_KEYS, PAPER, PAPER_PRIOR_ABLATION, fmt, paper_rows, table1_rows
from cascade_booth.runfolder import atomic_write_text

SCHEMA = "cascade-booth/evaluation/v1"
REPORT_FILES = {"json": "metrics.json", "markdown": "report.md", "html": "report.html"}


def clean(value):
    """Make a value strict-JSON-able: NaN/inf -> None, tuples -> lists, paths -> strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def build_report(subject: str, scores: dict, settings: dict, models: dict,
                 coverage: dict | None = None) -> dict:
    """A full report for one subject from :func:`cascade_booth.evaluation.scoring.score`'s output."""
    summary = dict(scores["summary"])
    per_subject = {subject: {**summary, "real_images": scores["real_images"]}}
    return clean({
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**settings, "div_metric": DIV_METRIC},
        "models": models,
        "overall": _overall(per_subject),
        "real_images": scores["real_images"],
        "per_subject": per_subject,
        "per_prompt": [{"subject": subject, **row} for row in scores["per_prompt"]],
        "per_image": [{"subject": subject, **row} for row in scores["per_image"]],
        "coverage": coverage or {},
        "paper": {"source": PAPER, "table1": paper_rows(),
                  "prior_ablation": [{"method": m, "pres": p, "div_lpips": d}
                                     for m, p, d in PAPER_PRIOR_ABLATION]},
    })


def _mean_of(rows: Sequence[dict], key: str) -> float | None:
    values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
    return sum(values) / len(values) if values else None


def _overall(per_subject: dict) -> dict:
    rows = list(per_subject.values())
    overall = {key: _mean_of(rows, key) for key in METRIC_KEYS}
    overall["n_subjects"] = len(rows)
    overall["n_instance_images"] = sum(row.get("n_instance_images", 0) for row in rows)
    overall["n_class_images"] = sum(row.get("n_class_images", 0) for row in rows)
    real = [row["real_images"] for row in rows if row.get("real_images")]
    overall["real_images"] = {"dino": _mean_of(real, "dino"), "clip_i": _mean_of(real, "clip_i")}
    return overall


def combine_reports(reports: Sequence[dict]) -> dict:
    """Merge single-subject reports (a sweep): overall metrics are means over subjects."""
    if not reports:
        raise ValueError("combine_reports: no reports")
    per_subject: dict = {}
    for report in reports:
        per_subject.update(report["per_subject"])
    combined = {key: value for key, value in reports[0].items() if key not in ("per_subject", "overall")}
    combined.update({
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "per_subject": per_subject, "overall": _overall(per_subject),
        "per_prompt": [row for report in reports for row in report["per_prompt"]],
        "per_image": [row for report in reports for row in report["per_image"]],
        "coverage": {name: report.get("coverage", {})
                     for report in reports for name in report["per_subject"]},
        "settings": {**reports[0]["settings"], "subjects": list(per_subject)},
    })
    combined.pop("real_images", None)
    return clean(combined)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def to_markdown(report: dict) -> str:
    """A Markdown summary: Table 1 beside the paper, PRES/DIV, per-subject and per-prompt tables."""
    settings, models, overall = report["settings"], report.get("models", {}), report["overall"]
    lines = ["# cascade-booth evaluation", "",
             f"Metrics of {PAPER}, section 4.1. DINO model: `{models.get('dino', {}).get('id', '?')}`; "
             f"CLIP model: `{models.get('clip', {}).get('id', '?')}`. "
             f"CLIP-T text: {settings.get('clip_t_text', '?')}.",
             *_benchmark_lines(report), "", "## Table 1: subject and prompt fidelity", ""]
    lines += _md_table(("Method", "DINO ↑", "CLIP-I ↑", "CLIP-T ↑"), table1_rows(report))
    lines += ["", "## Prior preservation and diversity", "",
              "PRES: DINO similarity of class-prompt samples to the subject (lower is better). "
              f"DIV here is `{settings.get('div_metric', DIV_METRIC)}` "
              "(the paper uses LPIPS, so the DIV values are not comparable).", ""]
    rows = [(f"{m} (paper)", fmt(p), fmt(d) + " (LPIPS)") for m, p, d in PAPER_PRIOR_ABLATION]
    rows.append(("cascade-booth (ours)", fmt(overall.get("pres")), fmt(overall.get("div"))))
    lines += _md_table(("Method", "PRES ↓", "DIV ↑"), rows)
    lines += ["", "## Per subject", ""]
    lines += _md_table(("Subject", "DINO", "CLIP-I", "CLIP-T", "PRES", "DIV", "images", "real"), [
        (_subject_link(report, name), *(fmt(row.get(k)) for k in METRIC_KEYS), str(row.get("n_instance_images", 0)),
         str(row.get("n_real_images", 0))) for name, row in report["per_subject"].items()])
    lines += ["", "## Per prompt", ""]
    lines += _md_table(("Subject", "Prompt", "kind", "n", "DINO", "CLIP-I", "CLIP-T", "DIV"), [
        (row["subject"], row["template"], row["kind"], str(row["n_images"]),
         *(fmt(row.get(k)) for k in ("dino", "clip_i", "clip_t", "div"))) for row in report["per_prompt"]])
    missing = [p for cov in _coverages(report) for p in cov.get("missing_templates", [])]
    if missing:
        lines += ["", f"Prompts with no generated image ({len(missing)}): " + "; ".join(missing[:30])]
    return "\n".join(lines) + "\n"


def _subject_link(report: dict, name: str) -> str:
    return f"[{name}](subjects/{name}/report.md)" if "benchmark" in report else name


def _benchmark_lines(report: dict) -> list[str]:
    """DreamBench coverage: how many subjects were evaluated, which are missing and why."""
    bench = report.get("benchmark")
    if not bench:
        return []
    lines = ["", "## DreamBench coverage", "",
             f"{len(bench['evaluated'])} of {len(bench['selected'])} selected subjects evaluated "
             f"(DreamBench has {bench['n_subjects']}; the paper uses 30 subjects x 25 prompts x 4 images). "
             "Overall metrics are means over the evaluated subjects; each has its own report under "
             "`subjects/<subject>/`."]
    missing = bench.get("missing") or {}
    if missing:
        lines += ["", f"Missing subjects ({len(missing)}):", ""]
        lines += [f"- `{name}`: {why}" for name, why in missing.items()]
    return lines


def _coverages(report: dict) -> list[dict]:
    coverage = report.get("coverage") or {}
    if "missing_templates" in coverage or "expected_templates" in coverage:
        return [coverage]
    return [value for value in coverage.values() if isinstance(value, dict)]


def to_json(report: dict) -> str:
    return json.dumps(clean(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_reports(report: dict, out_dir: str | Path, html: bool = True, images: bool = True) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and (optionally) ``report.html`` into ``out_dir``.

    ``images=False`` leaves the per-prompt image grids out of the HTML page (a benchmark's combined
    page links to the per-subject pages instead).
    """
    from cascade_booth.evaluation.html_report import to_html

    out_dir = Path(out_dir)
    written = {"json": atomic_write_text(out_dir / REPORT_FILES["json"], to_json(report)),
               "markdown": atomic_write_text(out_dir / REPORT_FILES["markdown"], to_markdown(report))}
    if html:
        written["html"] = atomic_write_text(out_dir / REPORT_FILES["html"], to_html(report, images=images))
    return written
