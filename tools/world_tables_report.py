"""Metrics and tables for ``tools/world_tables.py``: the world evaluators on each render set, Markdown + HTML.

Embedding metrics use the product's extractors and metric functions (``cascade_booth.evaluation``) with
the world's DINO and CLIP; the attribute read-back comes from ``world score`` (``cascade_booth.world.readback``).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from cascade_booth.evaluation import metrics as M
from cascade_booth.pngmeta import grid
from cascade_booth.world.readback import clip_text, rendered_pngs, renders_by_kind

MODELS = Path(__file__).resolve().parents[1] / "cascade_booth" / "world" / "models"


@lru_cache(maxsize=1)
def _extractors():
    from cascade_booth.evaluation.extractors import ClipExtractor, DinoExtractor

    return (DinoExtractor.from_pretrained(str(MODELS / "dino"), device="cpu"),
            ClipExtractor.from_pretrained(str(MODELS / "clip"), device="cpu"))


def _embed(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    dino, clip = _extractors()
    images = [Image.open(p).convert("RGB") for p in paths]
    return dino.embed_images(images, batch_size=32), clip.embed_images(images, batch_size=32)


def _renders(folder: Path) -> list[tuple[Path, dict]]:
    pngs = rendered_pngs(sorted(folder.rglob("*.png")))
    return [(p, json.loads(p.with_suffix(".json").read_text(encoding="utf-8"))) for p in pngs]


def render_metrics(folder: Path, photos: Path) -> dict[str, dict[str, float]]:
    """Per kind of render under ``folder`` ("instance", "class", "pretrained"): DINO, CLIP-I, CLIP-T, DIV;
    PRES = the class renders' DINO. Plus "real": the photos among themselves (Table 1's first row)."""
    real = sorted(p for p in photos.iterdir() if p.suffix == ".png")
    real_dino, real_clip = _embed(real)
    groups = renders_by_kind(rendered_pngs(sorted((folder / "personalized").rglob("*.png"))))
    groups["pretrained"] = _renders(folder / "pretrained")
    out: dict[str, dict[str, float]] = {"real": M.real_images_row(real_dino, real_clip)}
    _, clip = _extractors()
    for kind, rows in groups.items():
        dino_e, clip_e = _embed([p for p, _ in rows])
        texts = clip.embed_texts([clip_text(m) for _, m in rows])
        by_prompt: dict[str, list[int]] = {}
        for i, (_, m) in enumerate(rows):
            by_prompt.setdefault(m["prompt"], []).append(i)
        out[kind] = {"dino": M.dino_score(dino_e, real_dino), "clip_i": M.clip_i_score(clip_e, real_clip),
                     "clip_t": M.clip_t_score(texts, clip_e),
                     "div": M.diversity([dino_e[idx] for idx in by_prompt.values()])
                     if max(map(len, by_prompt.values())) > 1 else float("nan")}
    if "class" in out:
        out["instance"]["pres"] = out["class"]["dino"]
    return out


def draw_truth(folder: Path, cls: str, seed: int, per_context: int, size: int) -> Path:
    """The ground truth of the [V] prompts: the subject itself drawn by the world renderer in every non-plain
    context (``world.sampling.subject_in_contexts``), ``per_context`` poses each, at ``size`` px, with the same
    sidecars as a render (``folder/personalized``). Scored like a tool, it is what a perfect personalization
    reads: the ceiling of each metric on this subject (the paper's real-images row, in the asked contexts)."""
    from cascade_booth.world.readback import instance_prompts
    from cascade_booth.world.render import draw_scene
    from cascade_booth.world.sampling import subject_in_contexts
    from cascade_booth.world.vocab import CONTEXTS

    contexts = [ctx for ctx in CONTEXTS if ctx != "plain"]
    prompts = instance_prompts(cls, contexts)
    target = folder / "personalized"
    target.mkdir(parents=True, exist_ok=True)
    for i, example in enumerate(subject_in_contexts(cls, seed, contexts, per_context)):
        name = target / f"p{i // per_context:03d}-truth-{i % per_context:02d}"
        draw_scene(example.scene, size).save(name.with_suffix(".png"))
        meta = {"prompt": prompts[i // per_context], "kind": "instance", "truth": True}
        name.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def _f(value: float, pct: bool = False) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:.0%}" if pct else f"{value:.3f}"


def _stamp(folder: Path) -> str:
    """The render set's identity (names and modification times): a set rendered again is measured again."""
    names = "".join(f"{p.relative_to(folder)}:{p.stat().st_mtime_ns};" for p in sorted(folder.rglob("*.png")))
    return hashlib.sha256(names.encode()).hexdigest()


def _collect(out: Path, results: dict) -> dict[str, dict[str, dict]]:
    """{subject: {variant: {"m": embedding metrics, "s": read-back figures}}}, metrics cached in OUT/metrics."""
    table: dict[str, dict[str, dict]] = {}
    for tag, variants in results["subjects"].items():
        photos = out / "subjects" / tag
        for variant, item in variants.items():
            cache, stamp = out / "metrics" / tag / f"{variant}.json", _stamp(Path(item["renders"]))
            cached = json.loads(cache.read_text()) if cache.exists() else {}
            if cached.get("stamp") != stamp:
                cached = {"stamp": stamp, "metrics": render_metrics(Path(item["renders"]), photos)}
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(cached, indent=1))
            table.setdefault(tag, {})[variant] = {"m": cached["metrics"], "s": item["score"]}
    return table


def _row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def _avg(table: dict, variant: str, get) -> float:
    return _mean([get(v[variant]) for v in table.values() if variant in v])


TRUTH = "ground truth: the subject drawn in the asked contexts"


def table_one(table: dict) -> list[str]:
    """Table 1 analog, mean over subjects: stage one's 32 px output, and the cascade's 128 px output."""
    head = ["| | size | subjects | DINO | CLIP-I | CLIP-T | subject's colour | subject's pattern | context obeyed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    real = lambda k: _avg(table, "stage1", lambda v: v["m"]["real"][k])  # noqa: E731
    n = lambda variant: str(sum(variant in v for v in table.values()))  # noqa: E731
    rows = [_row("real images (the subject's photos among themselves)",
                 ["256", n("stage1"), _f(real("dino")), _f(real("clip_i")), "–", "–", "–", "–"])]
    for label, size, variant, kind in (
            ("pretrained cascade, class prompt (not personalized)", 32, "stage1", "pretrained"),
            ("stage one personalized", 32, "stage1", "instance"),
            (TRUTH, 32, "truth32", "instance"),
            ("pretrained cascade, class prompt (not personalized)", 128, "both", "pretrained"),
            ("stage one personalized, pretrained SR", 128, "stage1-sr", "instance"),
            ("both stages personalized", 128, "both", "instance"),
            *[(f"both stages personalized, {_variant_label(v)}", 128, v, "instance")
              for v in _sr_variants(table)],
            (TRUTH, 128, "truth", "instance")):
        if variant.startswith("truth") and n(variant) == "0":
            continue  # tables made before the ground-truth rows
        m = lambda k: _avg(table, variant, lambda v: v["m"][kind][k])  # noqa: E731,B023
        s = lambda k: _avg(table, variant, lambda v: v["s"][kind][k])  # noqa: E731,B023
        pattern = _f(s("pattern"), True) if size == 128 else "(not visible)"
        rows.append(_row(label, [str(size), n(variant), _f(m("dino")), _f(m("clip_i")), _f(m("clip_t")),
                                 _f(s("colour"), True), pattern, _f(s("context"), True)]))
    return head + rows


def _sr_variants(table: dict) -> list[str]:
    """Both stages again: at another ``render.sr_strength`` (both-sX) or with other train-sr flags (both-NAME)."""
    return sorted({k for v in table.values() for k in v if k.startswith("both-")})


def _variant_label(variant: str) -> str:
    name = variant.removeprefix("both-")
    return f"sr_strength {name[1:]}" if name[:1] == "s" and name[1:].replace(".", "").isdigit() else f"train-sr {name}"


GOALS = {"colour": 0.8, "pattern": 0.6, "context": 0.8}  # issue 13: the least rate of each, [V] renders at 128 px
MAX_DRIFT = 0.25  # issue 13: class prompts show the subject's colour at most this much more often than pretrained


def goals_met(score: dict) -> dict[str, bool]:
    """Issue 13's four per-subject goals on one ``world score`` result. Rates are counts over 24 renders, so a
    tolerance keeps e.g. 14/24 - 8/24 (printed +0.25) on the right side of the drift limit."""
    met = {k: score["instance"][k] >= least - 1e-9 for k, least in GOALS.items()}
    return met | {"drift": score["colour_drift"] <= MAX_DRIFT + 1e-9}


def per_subject(table: dict) -> list[str]:
    head = [f"| subject | 32 px: colour / context | 128 px: colour (goal >= {GOALS['colour'] * 100:.0f} %) | "
            f"pattern (>= {GOALS['pattern'] * 100:.0f} %) | context (>= {GOALS['context'] * 100:.0f} %) | "
            f"colour drift (<= {MAX_DRIFT:.2f}) | 128 px DINO: [V] / class / pretrained | [V] renders |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows, variants = [], ["both", *_sr_variants(table)]
    for (tag, v), variant in ((item, variant) for item in table.items() for variant in variants):
        if variant not in v:
            continue
        s, sub, s1 = v[variant]["s"], v[variant]["s"]["subject"], v["stage1"]["s"]["instance"]
        label = "" if variant == "both" else f", {_variant_label(variant)}"
        rows.append(_row(f"{tag} ({sub['colour']}, {sub['pattern']}){label}", [
            f"{_f(s1['colour'], True)} / {_f(s1['context'], True)}",
            _f(s["instance"]["colour"], True), _f(s["instance"]["pattern"], True), _f(s["instance"]["context"], True),
            f"{s['colour_drift']:+.2f}",
            " / ".join(f"{s[k]['dino']:+.2f}" for k in ("instance", "class", "pretrained")),
            str(s["instance"]["images"])]))
    for variant in variants:  # the verdict is counted here, never by hand
        met = [goals_met(v[variant]["s"]) for v in table.values() if variant in v]
        if met:
            label = "" if variant == "both" else f", {_variant_label(variant)}"
            rows.append(_row(f"**subjects meeting the goal (of {len(met)}){label}**", [
                "", *(str(sum(m[k] for m in met)) for k in met[0]),  # goals_met's order: the columns' order
                f"all four: **{sum(all(m.values()) for m in met)}**", ""]))
    return head + rows


def prior_ablation(table: dict) -> list[str]:
    head = ["| stage one | PRES (lower: prior kept) | DIV (1 - DINO) | class prompts: subject's colour | "
            "[V]: DINO | [V]: subject's colour |", "|---|---:|---:|---:|---:|---:|"]
    rows = []
    for label, variant in (("with prior preservation (preset)", "stage1"), ("without prior preservation", "noprior")):
        m = lambda kind, k: _avg(table, variant, lambda v: v["m"][kind][k])  # noqa: E731,B023
        s = lambda kind, k: _avg(table, variant, lambda v: v["s"][kind][k])  # noqa: E731,B023
        rows.append(_row(label, [_f(m("instance", "pres")), _f(m("instance", "div")), _f(s("class", "colour"), True),
                                 _f(m("instance", "dino")), _f(s("instance", "colour"), True)]))
    return head + rows


def detail_rows(table: dict, variants: list[tuple[str, str]]) -> list[str]:
    head = ["| subject | setting | DINO | CLIP-I | subject's colour | subject's pattern | context |",
            "|---|---|---:|---:|---:|---:|---:|"]
    rows = []
    for tag, v in table.items():
        if not all(variant in v for _, variant in variants):
            continue  # the detail experiments ran on some subjects only
        for label, variant in variants:
            if variant in v:
                m, s = v[variant]["m"]["instance"], v[variant]["s"]["instance"]
                rows.append(_row(tag, [label, _f(m["dino"]), _f(m["clip_i"]), _f(s["colour"], True),
                                       _f(s["pattern"], True), _f(s["context"], True)]))
    return head + rows


def meaning_rows(results: dict) -> list[str]:
    """A colour word as [V]: "a WORD <other class> <context>" read back, before and after training."""
    head = ["| subject | [V] | images | pretrained: the word's colour | personalized: the word's colour | "
            "pretrained: the subject's colour | personalized: the subject's colour |",
            "|---|---|---:|---:|---:|---:|---:|"]
    rows = []
    for tag, words in results.get("meaning", {}).items():
        for word, m in words.items():
            n = m["prompts"] * m["images"]
            rows.append(_row(tag, [f"'{word}' (subject: {m['subject_colour']})", str(n),
                                   _f(m["pretrained"]["word_colour"], True), _f(m["personalized"]["word_colour"], True),
                                   _f(m["pretrained"]["subject_colour"], True),
                                   _f(m["personalized"]["subject_colour"], True)]))
    return head + rows if rows else []


def meaning_picture(out: Path, results: dict) -> None:
    """OUT/meaning-<subject>-<word>.png: the pretrained cascade's "a WORD <class> <context>" (top) beside the
    run's with [V] = WORD (bottom), one image per prompt, 64 px tiles."""
    for tag, words in results.get("meaning", {}).items():
        for word, m in words.items():
            folder = out / "renders" / tag / f"meaning-{word}"
            rows = [[Image.open(p).convert("RGB").resize((64, 64), Image.NEAREST)
                     for p, _ in _renders(folder / name)][::m["images"]] for name in ("pretrained", "personalized")]
            grid(rows, pad=0).save(out / f"meaning-{tag}-{word}.png")


def _grid_html(out: Path, table: dict) -> str:
    parts = []
    for tag, variants in table.items():
        parts.append(f"<h3>{html.escape(tag)}</h3><table><tr><th>photos</th><td>" + "".join(
            f'<img src="{p.relative_to(out)}" width=96>' for p in sorted((out / "subjects" / tag).glob("*.png"))) +
            "</td></tr>")
        for variant in variants:
            folder = out / "renders" / tag / variant
            for kind, sub in (("instance", "personalized"), ("class", "personalized"), ("pretrained", "pretrained")):
                if kind == "pretrained" and variant not in ("both", "stage1"):
                    continue
                rows = [p for p, m in _renders(folder / sub)
                        if m.get("kind", "instance") == kind or sub == "pretrained"]
                imgs = "".join(f'<img src="{p.relative_to(out)}" width=96 title="{html.escape(p.name)}">'
                               for p in rows[::max(1, len(rows) // 6)][:6])
                parts.append(f"<tr><th>{html.escape(variant)}: {kind}</th><td>{imgs}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)


def write_tables(out: Path, results: dict) -> None:
    table = _collect(out, results)
    sections = [("Table 1 analog (mean over subjects)", table_one(table)),
                ("Per subject: both stages personalized, against issue 13's goals", per_subject(table)),
                ("Prior preservation ablation (paper Table 3; stage one, 32 px, mean over subjects)",
                 prior_ablation(table))]
    noise = sorted({k for v in table.values() for k in v if k.startswith("sr-noise-")}, key=lambda k: int(k[9:]))
    if noise:
        sections.append(("Stage two: noise-augmentation level (128 px)", detail_rows(
            table, [("pretrained SR", "stage1-sr"), ("fine-tuned SR, level 50 (the run's)", "both")] +
            [(f"fine-tuned SR, level {k[9:]}", k) for k in noise])))
    words = sorted({k for v in table.values() for k in v if k.startswith("identifier-")})
    if words:
        sections.append(("Identifier: the rare token vs a common word or a random string (stage one, 32 px)",
                         detail_rows(table, [("rare token (preset)", "stage1")] + [(f"'{k[11:]}'", k) for k in words])))
    meaning = meaning_rows(results)
    meaning_picture(out, results)
    if meaning:
        sections.append(("A colour word as [V]: what the word still means (\"a [V] <other class> <context>\", 32 px)",
                         meaning))
    md = [f"Made by `python tools/{results['command']}`.", ""]
    for title, rows in sections:
        md += [f"## {title}", "", *rows, ""]
    md += [f"## Seconds per step (this machine, {results['threads']} thread(s))", "", "| step | s |", "|---|---:|"]
    md += [f"| {k} | {v:.0f} |" for k, v in results.get("seconds", {}).items() if v is not None]
    (out / "tables.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"results": results, "metrics": table}, indent=1), encoding="utf-8")
    body = "".join(f"<h2>{html.escape(t)}</h2><pre>{html.escape(chr(10).join(r))}</pre>" for t, r in sections)
    (out / "tables.html").write_text(f"<html><body><h1>cascade-booth on the world: the paper's tables</h1>"
                                     f"<p>{html.escape(md[0])}</p>{body}<h2>Renders</h2>{_grid_html(out, table)}"
                                     "</body></html>", encoding="utf-8")
