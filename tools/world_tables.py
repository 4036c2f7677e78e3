"""The paper's tables on the world (issue 13): held-out world subjects, every context, 4 images each.

    python tools/world_tables.py --out build/world-tables                 # 6 subjects, all experiments
    python tools/world_tables.py --out build/world-tables --subjects clock:7,vase:7 --detail 1 --num-images 2

Every step is a ``cascade-booth`` command run as a child process (``OMP_NUM_THREADS=--threads``), logged
to ``OUT/logs/``; a finished step leaves ``OUT/done/<step>`` and is skipped when the command is run
again (an unfinished one resumes through the run folder). What it runs, per subject (``world subject``
with the given class and seed; the default seed 7 was never used for tuning):

- ``prior``: ``train-base --config world`` (the preset: prior preservation on), rendered at 32 px and through the
  pretrained SR (Table 1's "stage one personalized"); then ``train-sr --config world`` and rendered
  again (Table 1's "both stages personalized"). ``world score`` renders "a [V] <class> <context>" for
  every non-plain context, the same prompts without [V] from the run (class prompts) and from the
  pretrained cascade, and reads them back.
- ``noprior``: ``train-base --no-prior``, read back at 32 px (the paper's Table 3).
- ``truth32`` / ``truth``: the subject itself drawn by the world renderer in every asked context (32 / 128 px),
  read back like a render set: each metric's ceiling (Table 1's "ground truth" rows).
- ``--sr-variant NAME=FLAGS``: stage two trained again on a copy of the stage one with other ``train-sr`` flags,
  scored like both stages (``both-NAME``). ``--skip noprior,stage1-sr`` leaves those core variants out.
- ``--sr-strengths``: both stages again with ``world score --sr-strength S`` (stage two's img2img strength).
- On the first ``--detail`` subjects only: ``train-sr --noise-level L`` on copies of the prior run's
  stage one for each ``--noise-levels`` (the paper: low augmentation keeps fine detail), and
  ``train-base --identifier WORD`` for each ``--identifiers`` (a common word or a random string instead of the
  rare token); for a colour word, what the word still means after training (``meaning_probe``).

Metrics on every render set, with the world evaluators (``cascade_booth/world/models``): DINO and
CLIP-I (mean pairwise cosine similarity to the subject's 256 px photos), CLIP-T (prompt without [V]
vs image), PRES (DINO of the class-prompt renders to the subject), DIV (1 - mean DINO similarity
among the renders of one prompt: the paper uses LPIPS, which is not available offline) and the
attribute read-back (the subject's colour and pattern, the prompt's context). Tables: ``OUT/tables.md``
and ``OUT/tables.html`` (with one image grid per subject); every figure: ``OUT/results.json``.
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

import torch
from world_tables_report import draw_truth, write_tables  # a sibling: the script's folder is first on sys.path

from cascade_booth.world.vocab import CLASSES, COLOURS, CONTEXTS, caption

DEFAULT_SUBJECTS = "clock:7,vase:7,teapot:7,backpack:7,candle:7,bowl:7"
SMOKE_BASE = ["--steps", "4", "--class-images", "4", "--checkpoint-every", "0"]  # --smoke: every path, no meaning
SMOKE_SR = ["--steps", "2", "--checkpoint-every", "0"]


class Steps:
    """Runs ``cascade-booth`` commands once each; a finished step is recorded in OUT/done."""

    def __init__(self, out: Path, threads: int) -> None:
        self.out, self.threads = out, threads
        (out / "done").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)

    def done(self, name: str) -> bool:
        return (self.out / "done" / name).exists()

    def run(self, name: str, args: list[str]) -> str:
        """Run ``cascade-booth ARGS`` (once); returns its stdout (kept in OUT/done/NAME)."""
        marker = self.out / "done" / name
        if marker.exists():
            return marker.read_text(encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "cascade_booth.cli", *args]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: cascade-booth {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        with open(self.out / "logs" / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); see {self.out / 'logs' / (name + '.log')}")
        (self.out / "done" / f"{name}.seconds").write_text(f"{time.perf_counter() - t0:.1f}")
        marker.write_text(proc.stdout, encoding="utf-8")
        return proc.stdout

    def seconds(self, name: str) -> float | None:
        path = self.out / "done" / f"{name}.seconds"
        return float(path.read_text()) if path.exists() else None


def copy_stage_one(src: Path, dst: Path) -> None:
    """A new run holding ``src``'s stage one only (so that stage two can be trained on it again)."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=lambda d, names: [n for n in names if Path(d) == src and n in ("sr",)])
    meta = json.loads((tmp / "run.json").read_text(encoding="utf-8"))
    meta["stages"].pop("sr", None)  # stage two was not copied
    (tmp / "run.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tmp.rename(dst)


def ground_truth(renders: Path, variant: str, cls: str, seed: int, per: int, size: int, beside: str,
                 photos: Path) -> dict:
    """The subject itself drawn in every asked context (``draw_truth``), read back like a render set: Table 1's
    ceiling row. Its "pretrained" renders are those of ``beside`` (the same size), for ``render_metrics``."""
    from cascade_booth.world.readback import read_back, rendered_pngs

    folder = renders / variant
    pngs = rendered_pngs(sorted((folder / "personalized").glob("*.png")))
    if len(pngs) != per * (len(CONTEXTS) - 1):  # not drawn yet (or cut short): draw it (deterministic, seconds)
        pngs = rendered_pngs(sorted((draw_truth(folder, cls, seed, per, size) / "personalized").glob("*.png")))
    if not (folder / "pretrained").exists():
        (folder / "pretrained").symlink_to(Path("..") / beside / "pretrained")
    return {"score": read_back(pngs, photos), "renders": str(folder)}


def meaning_probe(steps: Steps, tag: str, run: Path, word: str, cls: str, images: int) -> dict:
    """What a colour word used as [V] still means after training (the paper's language drift of a common
    word, section 4.2): "a WORD <other class> <context>" through the run ([V] = WORD) and through the
    pretrained cascade, at 32 px; the rates at which the word's colour and the subject's colour are read back."""
    from cascade_booth.world.readback import Subject, read_images, rendered_pngs

    folder = steps.out / "renders" / tag / f"meaning-{word}"
    prompts = [caption(f"[V] {other}", None, None, ctx) for other in CLASSES if other != cls
               for ctx in CONTEXTS if ctx != "plain"]
    common = ["--no-sr", "--num-images", str(images)]
    for name, source, texts in (("personalized", ["--run", str(run)], prompts),
                                ("pretrained", ["--config", "world"], [p.replace("[V]", word) for p in prompts])):
        step = f"{tag}.meaning-{word}.{name}"
        if not steps.done(step):
            shutil.rmtree(folder / name, ignore_errors=True)  # an interrupted render: start it again
        steps.run(step, ["render", *source, *common, "--out", str(folder / name), *texts])
    subject = Subject.load(steps.out / "subjects" / tag)
    out = {"word": word, "subject_colour": subject.colour, "prompts": len(prompts), "images": images}
    for name in ("personalized", "pretrained"):
        colours = [r["colour"] for r in read_images(rendered_pngs(sorted((folder / name).rglob("*.png"))))]
        out[name] = {"word_colour": colours.count(word) / len(colours),
                     "subject_colour": colours.count(subject.colour) / len(colours)}
    return out


def subject_experiments(steps: Steps, cls: str, seed: int, detail: bool, args: argparse.Namespace,
                        meanings: dict[str, dict]) -> dict:
    """Train and score the variants of one subject; returns {variant: {"score": ..., "renders": folder}}
    (and with ``detail``, fills ``meanings``: {colour word: ``meaning_probe``'s figures}).

    Without ``detail``: the preset with and without prior preservation (read back at 32 px, ``--num-images``),
    stage one through the pretrained SR and both stages (128 px, ``--sr-images``: stage two's renders cost about
    10 s each on one CPU thread).
    With ``detail``: the stage-two noise levels and the identifiers (run after every subject's core)."""
    tag, out = f"{cls}-{seed}", steps.out
    photos, runs, renders = out / "subjects" / f"{cls}-{seed}", out / "runs" / tag, out / "renders" / tag
    steps.run(f"{tag}.photos", ["world", "subject", "--class", cls, "--seed", str(seed), "--out", str(photos)])
    base = ["train-base", "--config", "world", "--subject", str(photos), "--class-noun", cls, *SMOKE_BASE * args.smoke]
    sr = ["train-sr", "--config", "world", *SMOKE_SR * args.smoke]
    scored: dict[str, dict] = {}

    def score(variant: str, run: Path, sr: bool, extra: tuple[str, ...] = ()) -> None:
        images = args.sr_images if sr else args.num_images
        args_ = ["world", "score", "--run", str(run), "--subject", str(photos), "--out", str(renders / variant),
                 "--num-images", str(images), "--json", *extra] + ([] if sr else ["--no-sr"])
        scored[variant] = {"score": json.loads(steps.run(f"{tag}.score.{variant}", args_)),
                           "renders": str(renders / variant)}

    steps.run(f"{tag}.base.prior", [*base, "--run", str(runs / "prior")])
    copy_stage_one(runs / "prior", runs / "stage-one")  # before train-sr adds stage two to the prior run
    score("stage1", runs / "stage-one", sr=False)
    if "noprior" not in args.skip:
        steps.run(f"{tag}.base.noprior", [*base, "--run", str(runs / "noprior"), "--no-prior"])
        score("noprior", runs / "noprior", sr=False)
    steps.run(f"{tag}.sr.prior", [*sr, "--run", str(runs / "prior")])
    score("both", runs / "prior", sr=True)
    for name, flags in args.sr_variants:  # stage two again on the same stage one, with other train-sr flags
        copy_stage_one(runs / "stage-one", runs / f"sr-{name}")
        steps.run(f"{tag}.sr.{name}", [*sr, "--run", str(runs / f"sr-{name}"), *flags.split()])
        score(f"both-{name}", runs / f"sr-{name}", sr=True)
    if "stage1-sr" not in args.skip:
        score("stage1-sr", runs / "stage-one", sr=True)  # Table 1's stage one personalized, the pretrained SR
    for strength in args.sr_strengths:  # stage two's img2img strength (render.sr_strength), beside the run's own
        score(f"both-s{strength:g}", runs / "prior", sr=True, extra=("--sr-strength", f"{strength:g}"))
    truths = (("truth32", 32, args.num_images, "stage1"), ("truth", 128, args.sr_images, "both"))
    for variant, size, per, beside in truths:
        scored[variant] = ground_truth(renders, variant, cls, seed, per, size, beside, photos)
    if not detail:
        return scored
    for word in args.identifiers:
        run = runs / f"identifier-{word}"
        steps.run(f"{tag}.base.identifier-{word}", [*base, "--run", str(run), "--identifier", word])
        score(f"identifier-{word}", run, sr=False)
        if word in COLOURS:
            meanings[word] = meaning_probe(steps, tag, run, word, cls, args.num_images // 2 or 1)
    for level in args.noise_levels:
        run = runs / f"sr-noise-{level}"
        copy_stage_one(runs / "stage-one", run)
        steps.run(f"{tag}.sr.noise{level}", [*sr, "--run", str(run), "--noise-level", str(level)])
        score(f"sr-noise-{level}", run, sr=True)
    return scored


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--subjects", default=DEFAULT_SUBJECTS, help="CLASS:SEED,... (world subject)")
    p.add_argument("--detail", type=int, default=1, help="SR-noise and identifier experiments on the first N subjects")
    p.add_argument("--noise-levels", type=lambda s: [int(x) for x in s.split(",")], default=[10, 250])
    # "dots": a caption word that is one token (a pattern); "red": a colour word (two pieces here), whose own
    # meaning is probed after training; "xqzvk": a random string (three pieces), the paper's other weak choice
    p.add_argument("--identifiers", type=lambda s: s.split(","), default=["dots", "red", "xqzvk"])
    p.add_argument("--sr-strengths", type=lambda s: [float(x) for x in s.split(",") if x], default=[],
                   help="also score both stages at these render.sr_strength values")
    p.add_argument("--sr-variant", dest="sr_variants", action="append", default=[],
                   type=lambda v: tuple(v.split("=", 1)) if "=" in v else p.error(f"--sr-variant {v}: NAME=FLAGS"),
                   help="NAME=FLAGS: stage two again on each subject's stage one with these train-sr flags "
                        "(e.g. crop64='--crop 64'), scored like both stages (Table 1 and per-subject rows both-NAME)")
    p.add_argument("--skip", type=lambda s: set(s.split(",")) - {""}, default=set(),
                   help="core variants to leave out: noprior (Table 3), stage1-sr (Table 1's pretrained-SR row)")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt, 32 px read-back")
    p.add_argument("--sr-images", type=int, default=4,  # issue 13's goals: 4 images x every non-plain context
                   help="images per prompt, 128 px read-back")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="4 + 2 training steps: checks every path, measures nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = Steps(args.out.resolve(), args.threads)
    subjects = [(c, int(s)) for c, s in (item.split(":") for item in args.subjects.split(","))]
    command = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    results: dict = {"threads": args.threads, "command": command, "subjects": {}}
    plan = [(cls, seed, False) for cls, seed in subjects] + [(cls, seed, True) for cls, seed in subjects[:args.detail]]
    for cls, seed, detail in plan:  # every subject's core first, then the detail experiments
        meanings = results.setdefault("meaning", {}).setdefault(f"{cls}-{seed}", {})
        results["subjects"][f"{cls}-{seed}"] = subject_experiments(steps, cls, seed, detail, args, meanings)
        results["seconds"] = {name.name.removesuffix(".seconds"): steps.seconds(name.name.removesuffix(".seconds"))
                              for name in sorted((steps.out / "done").glob("*.seconds"))}
        write_tables(steps.out, results)  # after every subject: partial tables are worth having
    print(f"tables: {steps.out / 'tables.md'}, {steps.out / 'tables.html'}")


if __name__ == "__main__":
    main()
