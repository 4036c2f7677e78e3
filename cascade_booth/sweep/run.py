"""Run a sweep: train, render and evaluate every point, sharing what can be shared, resumable.

Layout of ``OUT``::

    OUT/sweep.json, OUT/sweep.md        every point with its settings and metrics; tables
    OUT/plots/<metric>_vs_<axis>.png    with matplotlib installed
    OUT/stage-one/<key>/                a stage-one run folder, shared by the points whose stage-one
                                        settings agree (they differ only in stage-two settings)
    OUT/points/<name>/point.json        the point's settings, fingerprints, status and metrics
    OUT/points/<name>/run/              its run folder: stage one's weights (hard links), its own
                                        stage two, renders/
    OUT/points/<name>/evaluation/       metrics.json, report.md, report.html (``cascade-booth evaluate``'s)

Everything is planned and checked before any work: the spec, every point's config, the subject
photos, the prompts, and each existing point folder against the spec (a point whose training
settings changed is refused, naming what changed). Rerunning the same command skips finished
points, resumes stage trainings from their checkpoints, and re-renders and re-scores a point whose
evaluation settings changed. Class images and prompt embeddings come from the package cache, so
points with the same prior settings generate them once. DINO and CLIP load once per sweep.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cascade_booth.drift import point_drift, sweep_learning
from cascade_booth.errors import BoothError, InputError, RunError, TrainingAborted
from cascade_booth.evaluation.inputs import discover_run
from cascade_booth.evaluation.paper import metrics_line
from cascade_booth.evaluation.prompts import resolve_prompts
from cascade_booth.runfolder import RunFolder, read_json, write_json
from cascade_booth.sweep.plan import PointPlan, SweepHooks, SweepPlan
from cascade_booth.sweep.report import write_outputs
from cascade_booth.sweep.spec import Point, SweepSpec, expand, settings_hash
from cascade_booth.sweep.tables import METRICS
from cascade_booth.sweep.train import train_point
from cascade_booth.writable import check_cache, check_writable

POINT_FILE = "point.json"
STAGE_ONE_RESOLUTION = 64  # IF-I's (and the tiny cascade's); stage one re-checks with its model's size


def check_subject(spec: SweepSpec) -> dict[str, str]:
    """Check the subject photos now (at stage two's size when it trains); their fingerprint, by file name."""
    from cascade_booth.session import SR_RESOLUTION, load_subject, subject_fingerprint

    min_size = SR_RESOLUTION if spec.sr else STAGE_ONE_RESOLUTION
    try:
        images, _ = load_subject(spec.subject, min_size)
    except InputError as err:
        raise InputError(f"subject photos (at least {min_size} px{' for stage two' if spec.sr else ''}): {err}"
                         ) from None
    return subject_fingerprint(images)


def _plan_point(spec: SweepSpec, out: Path, point: Point, subject: dict, templates: list[str]) -> PointPlan:
    learning = sweep_learning(point.config.to_dict(), spec.sr)
    stage_one = {k: v for k, v in learning.items() if k != "sr"}
    key = settings_hash({"config": stage_one, "class_noun": point.class_noun, "subject": subject}, 12)
    train = {"config": learning, "class_noun": point.class_noun, "subject": subject, "sr": spec.sr}
    evaluation = {"prompts": templates, "images_per_prompt": spec.images_per_prompt or point.config.render.num_images,
                  "class_prompts": spec.class_prompts, "render_seed": spec.render_seed,
                  "render": point.config.to_dict()["render"], "dino_model": spec.dino_model,
                  "clip_model": spec.clip_model}
    folder = out / "points" / point.name
    recorded = read_json(folder / POINT_FILE) if (folder / POINT_FILE).is_file() else {}
    as_json = json.loads(json.dumps({"train": train, "eval": evaluation}))  # compared with point.json's
    return PointPlan(point, folder, out / "stage-one" / key, as_json["train"], as_json["eval"], recorded)


def _conflict(pp: PointPlan) -> str | None:
    """Why an existing point folder cannot continue under the current spec (None if it can)."""
    if not pp.recorded:
        return None
    lines = point_drift(pp.recorded.get("train") or {}, pp.train)
    if not lines:
        if pp.recorded.get("stage_one"):  # keep the stage one it was trained from
            pp.stage_one = pp.stage_one.parent / str(pp.recorded["stage_one"])
        return None
    return f"point {pp.point.name} ({pp.folder}) was trained with other settings:\n  " + "\n  ".join(lines[:8])


def check_text(points: list[Point], templates: dict[str, list[str]]) -> None:
    """Class nouns and prompts against each stage-one model's tokenizer now, not at 77 tokens mid-sweep."""
    from cascade_booth.identifier import fill_identifier
    from cascade_booth.models import resolve_model
    from cascade_booth.text import check_prompts, check_training_text, load_tokenizer

    models = {p.config.model.base for p in points}
    tokenizers = {model: load_tokenizer(resolve_model(model, stage=1)) for model in models}
    for model, noun in sorted({(p.config.model.base, p.class_noun) for p in points}):
        check_training_text(tokenizers[model], noun, None)
        filled = [fill_identifier(t, "a") for t in templates[noun]]  # [V] is one token: "a" stands in for it
        check_prompts(tokenizers[model], templates[noun], filled)


def plan_sweep(spec: SweepSpec, out: Path) -> SweepPlan:
    """Check everything cheap (spec, configs, photos, prompts, existing folders) before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    check_writable(out, "--out")
    check_cache()
    subject = check_subject(spec)
    points = expand(spec)
    templates = {noun: resolve_prompts(spec.prompts, noun)[0] for noun in {p.class_noun for p in points}}
    check_text(points, templates)
    plans = [_plan_point(spec, out, p, subject, templates[p.class_noun]) for p in points]
    conflicts = [c for pp in plans if (c := _conflict(pp)) is not None]
    if conflicts:
        raise RunError("the sweep spec changed for points that already exist in " + str(out) + ":\n"
                       + "\n".join(conflicts) + "\nUse another --out, or delete those point folders to redo them.")
    return SweepPlan(spec, out, plans)


def _evaluate_point(spec: SweepSpec, pp: PointPlan, extractors: tuple) -> dict[str, Any]:
    from cascade_booth.evaluation.report import write_reports
    from cascade_booth.evaluation.runner import evaluate_subject

    images, _ = discover_run(pp.run)
    identifier = RunFolder(pp.run).read()["identifier"]
    report = evaluate_subject(images, spec.subject, *extractors, class_noun=pp.point.class_noun,
                              prompts=spec.prompts, identifier=identifier, batch_size=spec.eval_batch_size,
                              settings={"run": str(pp.run), "sweep_point": pp.point.name})
    write_reports(report, pp.evaluation)  # metrics.json, report.md, report.html (with the images)
    return {metric: report["overall"].get(metric) for metric in METRICS}


def _record(pp: PointPlan, **fields: Any) -> None:
    pp.recorded = {"name": pp.point.name, "settings": pp.point.settings, "class_noun": pp.point.class_noun,
                   "stage_one": pp.stage_one.name, "train": pp.train, "eval": pp.eval, "done": False,
                   "metrics": None} | fields
    write_json(pp.folder / POINT_FILE, pp.recorded)


def run_point(spec: SweepSpec, pp: PointPlan, extractors: tuple, hooks: SweepHooks, say: Callable[[str], None]
              ) -> dict[str, Any]:
    """Train (or reuse), render and evaluate one point; returns its metrics."""
    from cascade_booth.sweep.render import render_point

    _record(pp)
    train_point(spec, pp, hooks, say)
    n_images, templates = pp.eval["images_per_prompt"], pp.eval["prompts"]
    extra = " (+ the class prompts)" if spec.class_prompts else ""
    say(f"rendering {len(templates)} prompt(s){extra} x {n_images} image(s)")
    render_point(pp.run, templates, n_images, spec.render_seed, sr=spec.sr, class_prompts=spec.class_prompts,
                 warn=lambda message: hooks.echo(f"warning: {message}"))
    say("evaluating")
    metrics = _evaluate_point(spec, pp, extractors)
    _record(pp, done=True, metrics=metrics)
    return metrics


def _load_extractors(spec: SweepSpec) -> tuple:
    from cascade_booth.evaluation.extractors import load_extractors, resolve_device

    return load_extractors(spec.dino_model, spec.clip_model, device=resolve_device(spec.device))


def run_sweep(plan: SweepPlan, hooks: SweepHooks | None = None) -> dict[str, Any]:
    """Run every point that is not done, then write ``sweep.json``, ``sweep.md`` and plots; returns the result."""
    hooks = hooks or SweepHooks()
    lock = RunFolder(plan.out)
    try:
        lock.lock()
    except RunError:
        raise RunError(f"{plan.out}: another cascade-booth sweep is using this folder; wait for it or stop it"
                       ) from None
    try:
        todo = [pp for pp in plan.points if not pp.done]
        extractors = _load_extractors(plan.spec) if todo else ()
        total = len(plan.points)
        for index, pp in enumerate(plan.points, start=1):
            def say(message: str, pp: PointPlan = pp, index: int = index) -> None:
                hooks.echo(f"[{index}/{total}] {pp.point.name}: {message}")

            if pp.done:
                say("done earlier, skipped")
                continue
            try:
                metrics = run_point(plan.spec, pp, extractors, hooks, say)
            except BoothError as err:
                resume = " Rerun the same sweep command to resume." if isinstance(err, TrainingAborted) else ""
                err.args = (f"sweep point {pp.point.name}: {err}{resume}",)
                raise
            say(metrics_line(metrics))
        return write_outputs(plan, hooks.echo)
    finally:
        lock.unlock()

