"""Time to quality (issue 14): cascade-booth's stage one read back every ``--every`` steps, beside diffusers.

    python tools/bench_world_curve.py --bench build/bench-world --out build/bench-world-curve

Uses the subject photos of a finished ``tools/bench_world.py`` run (``BENCH/subject``). Trains stage one
with the world preset in segments (``train-base --steps K``, then ``--resume --steps K + every``: the
schedule is constant after warm-up, so the segments train exactly what one straight run does) and after
each segment reads the run back at 32 px (``world score --no-sr --num-images 4``, as the bench does).
Class images are made in ``OUT/cache``, as the bench makes them. The wall time of a point is the sum of
its segments' wall times (each segment also starts the process and loads the model again: an upper
bound on one run's time to that step).

``--diffusers-script``: also diffusers' curve at equal settings (the bench's diffusers-equal stage one,
``tools/bench_world.equal_commands``), trained once with their ``--checkpointing_steps EVERY``; a point's wall
time is from their process start to the moment the checkpoint's LoRA file was written (their class images
included, as ours are in the first segment; their checkpoints also save the optimizer state). Each
checkpoint's LoRA is rendered as the bench renders diffusers (``bench_world_render.py --no-sr``) and read
back the same way.

Writes ``OUT/curve.md`` with the bench's final rows and ``OUT/curve.png``, the fixed-noise grid: each
point's [V] renders with the same seeds, one row per point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def cascade_booth(args: list[str], threads: int, out: Path, log: str) -> tuple[str, float]:
    """Run ``cascade-booth ARGS`` with its own cache under OUT (class images are made here, as in the bench)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               CASCADE_BOOTH_CACHE=str(out / "cache"))
    t0 = time.perf_counter()
    with open(out / log, "a") as err:
        proc = subprocess.run([sys.executable, "-m", "cascade_booth.cli", *args], env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"cascade-booth {' '.join(args[:2])} failed (exit {proc.returncode}); see {out / log}")
    return proc.stdout, time.perf_counter() - t0


def curve(a: argparse.Namespace) -> list[dict]:
    """Train to each point and read it back; a point already in OUT/points is kept (rerun to resume)."""
    subject = a.bench / "subject"
    cls = json.loads((subject / "subject.json").read_text())["class"]
    run, points, wall = a.out / "run", [], 0.0
    lr = ["--lr", f"{a.lr:g}"] if a.lr else []  # default: the world preset's
    (a.out / "points").mkdir(parents=True, exist_ok=True)
    for steps in range(a.every, a.steps + 1, a.every):
        done = a.out / "points" / f"{steps}.json"
        if done.exists():
            points.append(json.loads(done.read_text()))
            wall = points[-1]["wall_s"]
            continue
        resume = ["--resume"] if (run / "run.json").exists() else []
        train = ["train-base", "--config", "world", "--subject", str(subject), "--class-noun", cls, "--run", str(run),
                 "--steps", str(steps), *resume, *lr]
        _, seconds = cascade_booth(train, a.threads, a.out, "train.log")
        wall += seconds
        score_dir = a.out / f"score-{steps}"
        shutil.rmtree(score_dir, ignore_errors=True)  # an interrupted read-back starts again
        score, _ = cascade_booth(["world", "score", "--run", str(run), "--subject", str(subject), "--out",
                                  str(score_dir), "--num-images", "4", "--no-sr", "--json"], a.threads, a.out,
                                 "score.log")
        figures = json.loads(score)
        points.append({"steps": steps, "wall_s": round(wall, 1), "instance": figures["instance"],
                       "class": figures["class"], "pretrained": figures["pretrained"]})
        done.write_text(json.dumps(points[-1]))
        print(f"step {steps}: {wall:.0f} s, DINO {figures['instance']['dino']:+.3f}", flush=True)
    return points


def their_stage_one(a: argparse.Namespace, cls: str, ident: str, photos: Path, work: Path) -> list[str]:
    """diffusers-equal's stage-one command, checkpointed every ``a.every`` steps (the bench's stage two is not run)."""
    from bench_world import equal_commands  # siblings: the script's folder is first on sys.path

    bench = argparse.Namespace(cls=cls, smoke=False, diffusers_script=a.diffusers_script, diffusers_full_script=None)
    s1, _ = equal_commands(bench, photos, work, f"a {ident} {cls}", checkpointing=a.every, base_steps=a.steps)
    return s1


def diffusers_curve(a: argparse.Namespace) -> list[dict]:
    """Their stage one at equal settings, checkpointed every ``a.every`` steps, each checkpoint read back."""
    from bench_world import env_for  # siblings: the script's folder is first on sys.path
    from bench_world_report import readback

    work, subject = a.out / "diffusers", a.bench / "subject"
    cls = json.loads((subject / "subject.json").read_text())["class"]
    ident = json.loads((a.bench / "cascade-booth" / "run" / "run.json").read_text())["identifier"]
    photos = a.bench / "photos"  # PNGs only: their script opens every file of the folder
    env = env_for(a.threads, work / "cache")
    times = work / "times.json"
    if not times.exists():
        shutil.rmtree(work / "base", ignore_errors=True)  # an interrupted training starts again
        s1 = their_stage_one(a, cls, ident, photos, work)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(work / "train.log", "w") as log:
            subprocess.run(s1, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        written = {int(c.name.split("-")[1]): (c / "pytorch_lora_weights.safetensors").stat().st_mtime - t0
                   for c in (work / "base").glob("checkpoint-*")}
        times.write_text(json.dumps({str(k): round(v, 1) for k, v in sorted(written.items())}))
    points = []
    for steps, wall in json.loads(times.read_text()).items():
        folder, done = work / f"score-{steps}", work / "points" / f"{steps}.json"
        if not done.exists():  # a point already read back is kept (rerun to resume)
            shutil.rmtree(folder, ignore_errors=True)
            render = [sys.executable, str(Path(__file__).with_name("bench_world_render.py")), "--base-lora",
                      str(work / "base" / f"checkpoint-{steps}"), "--identifier", ident, "--class-noun", cls,
                      "--out", str(folder), "--num-images", "4", "--no-sr"]
            subprocess.run(render, env=env, stdout=subprocess.DEVNULL, check=True)
            q = readback(folder, subject)
            done.parent.mkdir(exist_ok=True)
            done.write_text(json.dumps({"steps": int(steps), "wall_s": wall, "instance": q["instance"],
                                        "class": q["class"]}))
        points.append(json.loads(done.read_text()))
        print(f"diffusers step {steps}: {wall:.0f} s, DINO {points[-1]['instance']['dino']:+.3f}", flush=True)
    return points


def fixed_noise_grid(a: argparse.Namespace, points: list[dict], theirs: list[dict]) -> None:
    """OUT/curve.png, the fixed-noise grid over training steps: the subject's photos, the untrained cascade's
    class prompts, then one row per point: the first image of every [V] prompt (the same noise in every row);
    then diffusers' points the same way (their sampling's own seeds)."""
    from PIL import Image

    from cascade_booth.pngmeta import grid

    photos = sorted((a.bench / "subject").glob("*.png"))
    rows = [photos, sorted((a.out / f"score-{points[0]['steps']}" / "pretrained").glob("*-00.png"))]  # untrained
    folders = [a.out / f"score-{p['steps']}" for p in points] + [a.out / "diffusers" / f"score-{p['steps']}"
                                                                  for p in theirs]
    for folder in folders:
        renders = sorted((folder / "personalized").glob("*-00.png"))
        rows.append([r for r in renders if json.loads(r.with_suffix(".json").read_text()).get("kind") != "class"])
    tiles = [[Image.open(path).convert("RGB").resize((64, 64), Image.NEAREST) for path in row] for row in rows]
    grid(tiles, pad=0).save(a.out / "curve.png")


def write(a: argparse.Namespace, points: list[dict], theirs: list[dict]) -> None:
    bench = json.loads((a.bench / "results.json").read_text())["tools"]
    lines = [f"Made by `python tools/bench_world_curve.py {' '.join(sys.argv[1:])}` ({a.threads} thread(s)); "
             f"stage one at lr {a.lr or 'of the world preset'}, read back at 32 px, 4 images x 6 contexts.", "",
             "| tool | steps | stage one wall s (cumulative) | [V]: world DINO | [V]: subject's colour | context |"
             " class prompts: DINO |", "|---|---:|---:|---:|---:|---:|---:|"]
    for tool, rows in (("cascade-booth", points), ("diffusers-equal", theirs)):
        for p in rows:
            i = p["instance"]
            lines.append(f"| {tool} | {p['steps']} | {p['wall_s']:.0f} | {i['dino']:.3f} | {i['colour']:.0%} | "
                         f"{i['context']:.0%} | {p['class']['dino']:.3f} |")
    for tool, row in bench.items():
        q = row.get("quality32", {}).get("readback", {})
        if "instance" in q:
            wall = row.get("time", {}).get("stage one", {}).get("wall_s", float("nan"))
            steps = "–" if tool.endswith("pretrained") else "final"
            lines.append(f"| {tool} (bench) | {steps} | {wall:.0f} | {q['instance']['dino']:.3f} | "
                         f"{q['instance']['colour']:.0%} | {q['instance']['context']:.0%} | {q['class']['dino']:.3f} |")
    (a.out / "curve.md").write_text("\n".join(lines) + "\n")
    (a.out / "curve.json").write_text(json.dumps({"cascade-booth": points, "diffusers-equal": theirs}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", type=Path, required=True, help="a finished tools/bench_world.py --out folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, help="stage one's learning rate (default: the world preset's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--diffusers-script", type=Path, help="diffusers' train_dreambooth_lora.py: their curve too")
    a = p.parse_args()
    points = curve(a)
    theirs = diffusers_curve(a) if a.diffusers_script else []
    fixed_noise_grid(a, points, theirs)
    write(a, points, theirs)


if __name__ == "__main__":
    main()
