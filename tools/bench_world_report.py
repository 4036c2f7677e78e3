"""The quality read-back and the results tables of ``tools/bench_world.py`` (issue 14).

``quality``: a folder of renders (``personalized/`` with JSON sidecars, ``pretrained/``) read back by the world
evaluators: the attribute net's colour / pattern / context rates and world DINO per kind of prompt, plus the
embedding metrics of ``tools/world_tables_report.render_metrics``. ``write_results``: ``OUT/results.json`` and
the Markdown table ``OUT/results.md``, one column per tool.
"""

from __future__ import annotations

import json
from pathlib import Path


def readback(folder: Path, photos: Path) -> dict:
    """Per kind of prompt in ``folder/personalized``: the attribute net's rates and world DINO to the photos."""
    from cascade_booth.world.readback import read_back, rendered_pngs

    return read_back(rendered_pngs(sorted((folder / "personalized").glob("*.png"))), photos)


def quality(folder: Path, photos: Path) -> dict:
    """``readback`` plus the embedding metrics of ``folder/personalized`` (and ``folder/pretrained``)."""
    from world_tables_report import render_metrics  # a sibling: the script's folder is first on sys.path

    return {"readback": readback(folder, photos), "metrics": render_metrics(folder, photos)}


def _fmt_parts(t: dict) -> str:
    return "; ".join(f"{k} {v['s']:.0f} s / {v['peak_mib']:.0f} MiB" for k, v in t["parts"].items())


def write_results(out: Path, results: dict) -> None:
    for tool in results["tools"]:  # each tool's untrained cascade, where its renders are kept
        kind = "pretrained" if tool.startswith("cascade-booth") else "class" if tool == "diffusers-pretrained" else ""
        if kind:
            for key, q in (("baseline_dino", "quality"), ("baseline32_dino", "quality32")):
                if q in results["tools"][tool]:
                    results["tools"][tool][key] = results["tools"][tool][q]["metrics"][kind]["dino"]
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    columns = {**results["tools"], **({"ground truth": results["truth"]} if "truth" in results else {})}
    md = [f"Made by `python tools/{results['command']}` ({results['threads']} thread(s) per tool).", "",
          "| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]

    def row(label: str, get) -> None:
        cells = []
        for column in columns.values():
            try:
                cells.append(get(column))
            except (KeyError, TypeError):
                cells.append("–")
        md.append(f"| {label} | " + " | ".join(cells) + " |")

    total = lambda r: sum(t["wall_s"] for t in r["time"].values())  # noqa: E731
    row("photos -> first personalized render, s", lambda r: f"{total(r):.0f}" if r["time"] else "–")
    for stage in ("stage one", "stage two", "first render"):
        row(f"{stage}: wall s / peak RSS MiB", lambda r, s=stage: f"{r['time'][s]['wall_s']:.0f} / "
            f"{r['time'][s]['rss_mib']:.0f}")
    for kind, label in (("instance", "[V] prompts"), ("class", "class prompts")):
        q = lambda r, k=kind: r["quality"]["readback"][k]  # noqa: E731
        m = lambda r, k=kind: r["quality"]["metrics"][k]  # noqa: E731
        row(f"{label}: world DINO to the photos", lambda r, m=m: f"{m(r)['dino']:.3f}")
        row(f"{label}: CLIP-I / CLIP-T", lambda r, m=m: f"{m(r)['clip_i']:.3f} / {m(r)['clip_t']:.3f}")
        row(f"{label}: subject's colour / pattern / context", lambda r, q=q: f"{q(r)['colour']:.0%} / "
            f"{q(r)['pattern']:.0%} / {q(r)['context']:.0%}")
    row("pretrained cascade, class prompts, this tool's sampling: DINO", lambda r: f"{r['baseline_dino']:.3f}")
    md.append("| **stage one alone, 32 px** (4 images per prompt) | " + " | ".join("" for _ in columns) + " |")
    for kind, label in (("instance", "[V] prompts"), ("class", "class prompts")):
        q = lambda r, k=kind: r["quality32"]["readback"][k]  # noqa: E731
        m = lambda r, k=kind: r["quality32"]["metrics"][k]  # noqa: E731
        row(f"{label}: world DINO / CLIP-T", lambda r, m=m: f"{m(r)['dino']:.3f} / {m(r)['clip_t']:.3f}")
        row(f"{label}: subject's colour / context", lambda r, q=q: f"{q(r)['colour']:.0%} / {q(r)['context']:.0%}")
    row("pretrained cascade, class prompts, this tool's sampling: DINO",
        lambda r: f"{r['baseline32_dino']:.3f}")
    if "truth" in results:
        md += ["", "ground truth: the subject itself drawn by the world renderer in each asked context (`draw_truth`), "
               "scored like a tool: what a perfect personalization reads on each metric."]
    md += ["", "Parts (seconds / peak RSS of the part):", ""]
    for tool, r in results["tools"].items():
        for stage, t in r.get("time", {}).items():
            md.append(f"- {tool}, {stage}: {_fmt_parts(t)}")
    (out / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
