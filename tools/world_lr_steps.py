"""Learning rate x steps in the form of the paper's fixed-noise study (issue 13), from curves of
``tools/bench_world_curve.py`` run at several ``--lr`` on one subject:

    python tools/bench_world_curve.py --bench build/bench-world --out build/curve-lr1e-3 --lr 1e-3   # and others
    python tools/world_lr_steps.py build/bench-world-curve build/curve-lr1e-3 build/curve-lr1e-2 --out build/lr-steps

Writes ``OUT/lr-steps.md`` (world DINO and the subject's colour of the [V] renders at each learning rate and
step) and ``OUT/lr-steps.png``: one row per learning rate and prompt, one column per step, every cell
sampled with the same seed (the first image of the prompt), the subject's photos in the first row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from cascade_booth.pngmeta import grid

TILE = 64


def curve_lr(folder: Path) -> float:
    return json.loads((folder / "run" / "run.json").read_text())["config"]["base"]["lr"]


def points(folder: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (folder / "points").glob("*.json")), key=lambda p: p["steps"])


def first_render(folder: Path, steps: int, prompt: int) -> Path:
    return folder / f"score-{steps}" / "personalized" / f"p{prompt:03d}-seed0-00.png"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("curves", type=Path, nargs="+", help="bench_world_curve.py --out folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bench", type=Path, default=Path("build/bench-world"), help="whose subject photos head the grid")
    p.add_argument("--prompts", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2],
                   help="which [V] prompts (context order of `world vocab`) get picture rows")
    a = p.parse_args()
    curves = sorted(a.curves, key=curve_lr)
    steps = [pt["steps"] for pt in points(curves[0])]
    lines = ["| lr \\ steps | " + " | ".join(map(str, steps)) + " |", "|---|" + "---:|" * len(steps)]
    for folder in curves:
        cells = [f"{pt['instance']['dino']:.3f} / {pt['instance']['colour']:.0%}" for pt in points(folder)]
        lines.append(f"| {curve_lr(folder):g} | " + " | ".join(cells) + " |")
    a.out.mkdir(parents=True, exist_ok=True)
    text = ["[V] renders: world DINO to the photos / subject's colour read back (24 renders per cell).", "", *lines]
    (a.out / "lr-steps.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    photos = sorted((a.bench / "subject").glob("*.png"))
    rows = [photos] + [[first_render(folder, s, k) for s in steps] for folder in curves for k in a.prompts]
    tiles = [[Image.open(path).convert("RGB").resize((TILE, TILE), Image.NEAREST) for path in row] for row in rows]
    grid(tiles, pad=0).save(a.out / "lr-steps.png")


if __name__ == "__main__":
    main()
