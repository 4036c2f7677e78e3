"""``cascade-booth evaluate``: the paper's metrics (section 4.1) for one subject or all of DreamBench.

The main CLI attaches this command with ``main.add_command(evaluate)`` and turns
:class:`cascade_booth.errors.BoothError` into a clean message and a non-zero exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from cascade_booth.errors import InputError
from cascade_booth.evaluation.benchmark import (
    benchmark_report,
    discover_benchmark,
    evaluate_benchmark,
    load_dreambench,
    select_subjects,
)
from cascade_booth.evaluation.distributed import Shard, shard_device, sharding
from cascade_booth.evaluation.extractors import DEFAULT_CLIP, DEFAULT_DINO, load_extractors, resolve_device
from cascade_booth.evaluation.inputs import discover_generated, discover_run, list_subject_images
from cascade_booth.evaluation.paper import PAPER_REAL, fmt, metrics_line
from cascade_booth.evaluation.prompts import resolve_prompts
from cascade_booth.evaluation.report import write_reports
from cascade_booth.evaluation.runner import evaluate_subject, resolve_class_noun
from cascade_booth.writable import check_writable

DEFAULT_OUT_SUBDIR = "evaluation"
SUBJECTS_SUBDIR = "subjects"


def _inputs(run_dir: Path | None, generated: Path | None):
    if run_dir is not None and generated is not None:
        raise InputError("pass either --run or --generated, not both")
    if run_dir is not None:
        images, skipped = discover_run(run_dir)
        return images, skipped, {"run": str(run_dir), "generated": str(run_dir / "renders")}
    if generated is None:
        raise InputError("nothing to evaluate: pass --run RUN_DIR or --generated DIR (PNGs with a prompt)")
    images, skipped = discover_generated(generated)
    return images, skipped, {"generated": str(generated)}


def _out_dir(out_dir: Path | None, run_dir: Path | None, default: str = "--run") -> Path:
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"--out {out_dir}: exists and is not a folder")
        check_writable(out_dir, "--out")
        return out_dir
    if run_dir is not None:
        check_writable(run_dir / DEFAULT_OUT_SUBDIR, "output folder")
        return run_dir / DEFAULT_OUT_SUBDIR
    raise InputError(f"--out DIR is needed with --generated (with {default} it defaults to "
                     f"{default.strip('-').upper()}/{DEFAULT_OUT_SUBDIR})")


@click.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder; evaluates the PNGs under RUN/renders/.")
@click.option("--generated", type=click.Path(path_type=Path), default=None,
              help="Folder of generated PNGs, each with a 'prompt' in NAME.json or a PNG text chunk "
                   "(with --dreambench: one such folder per subject, GEN/<subject>/).")
@click.option("--subject", "subject_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the subject's real images.")
@click.option("--class-noun", default=None,
              help="Class noun (e.g. dog); read from metadata or DreamBench if omitted.")
@click.option("--identifier", default=None,
              help="The [V] token in the prompts; inferred from them if omitted.")
@click.option("--prompts", "prompts", default="dreambench", show_default=True,
              help="'dreambench' (object or live list by class) or a file with one [V] prompt per line.")
@click.option("--dreambench", "dreambench_dir", type=click.Path(path_type=Path), default=None,
              help="DreamBench checkout (prompts_and_classes.txt, one photo folder per subject): evaluate "
                   "every subject that has generated images, from --runs or --generated.")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), default=None,
              help="With --dreambench: folder of run folders, one per subject (RUNS/<subject>/renders/).")
@click.option("--subjects", default=None, help="With --dreambench: only these subjects, e.g. dog,cat2,clock.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where to write metrics.json, report.md and report.html "
                   "[default: RUN/evaluation, or RUNS/evaluation with --dreambench --runs].")
@click.option("--dino-model", default=DEFAULT_DINO, show_default=True,
              help="DINO ViT hub id, local folder, or 'world' (the world's evaluator).")
@click.option("--clip-model", default=DEFAULT_CLIP, show_default=True,
              help="CLIP hub id, local folder, or 'world'.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per extractor batch.")
@click.option("--html/--no-html", default=True, show_default=True, help="Also write the HTML page.")
def evaluate(run_dir, generated, subject_dir, class_noun, identifier, prompts, dreambench_dir, runs_dir,
             subjects, out_dir, dino_model, clip_model, device, batch_size, html):
    """Score generated images with DINO, CLIP-I, CLIP-T, PRES and DIV (DreamBooth paper, section 4.1).

    One subject (--subject with --run or --generated), or all of DreamBench (--dreambench with --runs
    or --generated). Under `accelerate launch` / `torchrun` the embedding work is split across the
    processes and the main process writes the reports.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    models = Models(dino_model, clip_model, device, batch_size)
    if dreambench_dir is not None:
        _reject("with --dreambench (each subject's photos and class come from DIR)",
                ("--subject", subject_dir), ("--run", run_dir), ("--class-noun", class_noun))
        _evaluate_dreambench(dreambench_dir, runs_dir, generated, subjects, prompts, identifier, out_dir,
                             models, html)
        return
    _reject("without --dreambench DIR", ("--runs", runs_dir), ("--subjects", subjects))
    if subject_dir is None:
        raise InputError("--subject DIR is needed (the folder of the subject's real images)")
    images, skipped, sources = _inputs(run_dir, generated)
    out = _out_dir(out_dir, run_dir)
    # Check the cheap inputs before loading models, so mistakes are reported at once.
    list_subject_images(subject_dir)
    resolve_prompts(prompts, resolve_class_noun(class_noun, subject_dir, images))
    with models.load() as (dino, clip, shard, settings):
        report = evaluate_subject(images, subject_dir, dino, clip, class_noun=class_noun, prompts=prompts,
                                  identifier=identifier, batch_size=batch_size,
                                  settings={**sources, **settings, "skipped_files": [str(p) for p in skipped]})
        if shard.is_main:
            _echo_summary(report, write_reports(report, out, html=html), skipped)


@dataclass(frozen=True)
class Models:
    """The extractor options; :meth:`load` joins the launched processes and loads both models once."""

    dino: str
    clip: str
    device: str
    batch_size: int

    @contextlib.contextmanager
    def load(self) -> Iterator[tuple[object, object, Shard, dict]]:
        """Yield (dino, clip, shard, settings); the extractors embed only this process's share."""
        torch_device = shard_device(resolve_device(self.device))
        with sharding(torch_device) as shard:
            dino, clip = shard.wrap(*load_extractors(self.dino, self.clip, device=torch_device))
            yield dino, clip, shard, {"device": str(torch_device), "processes": shard.world_size}


def _reject(why: str, *options: tuple[str, object]) -> None:
    given = [name for name, value in options if value is not None]
    if given:
        raise InputError(f"{', '.join(given)} cannot be used {why}")


def _evaluate_dreambench(dreambench_dir: Path, runs_dir: Path | None, generated: Path | None,
                         subjects: str | None, prompts: str, identifier: str | None, out_dir: Path | None,
                         models: Models, html: bool) -> None:
    """``--dreambench``: every subject with images; reports in OUT/subjects/<name>/ and OUT/ (combined)."""
    bench = load_dreambench(dreambench_dir)
    selected = select_subjects(bench, subjects)
    inputs, missing = discover_benchmark(bench, selected, runs=runs_dir, generated=generated)
    out = _out_dir(out_dir, runs_dir, default="--runs")
    for item in inputs:  # cheap checks before models load: prompts files, class nouns
        resolve_prompts(prompts, bench.classes[item.name])
    source = {"runs": str(runs_dir)} if runs_dir is not None else {"generated": str(generated)}
    with models.load() as (dino, clip, shard, settings):
        def write_subject(name: str, report: dict) -> None:
            if shard.is_main:
                write_reports(report, out / SUBJECTS_SUBDIR / name, html=html)
                click.echo(f"{name}: {metrics_line(report['overall'])}")

        reports = evaluate_benchmark(bench, inputs, dino, clip, prompts=prompts, identifier=identifier,
                                     batch_size=models.batch_size, settings=settings, on_subject=write_subject)
        if shard.is_main:
            combined = benchmark_report(bench, reports, selected, missing, {**source, **settings})
            written = write_reports(combined, out, html=html, images=False)
            if missing:
                click.echo(f"{len(missing)} subject(s) without generated images: {', '.join(missing)}")
            _echo_summary(combined, written, [item_path for item in inputs for item_path in item.skipped])


def _echo_summary(report: dict, written: dict, skipped: list) -> None:
    overall, real = report["overall"], report["overall"].get("real_images", {})
    subjects = f" over {overall['n_subjects']} subjects" if overall.get("n_subjects", 1) > 1 else ""
    click.echo(f"images: {overall['n_instance_images']} instance, {overall['n_class_images']} class-prompt"
               + subjects + (f" ({len(skipped)} PNG(s) without a prompt skipped)" if skipped else ""))
    click.echo(f"{metrics_line(overall)} ({report['settings']['div_metric']})")
    click.echo(f"real images: DINO {fmt(real.get('dino'))}  CLIP-I {fmt(real.get('clip_i'))}  "
               f"(paper: {fmt(PAPER_REAL['dino'])} / {fmt(PAPER_REAL['clip_i'])})")
    missing = report.get("coverage", {}).get("missing_templates", [])
    if missing:
        click.echo(f"{len(missing)} expected prompt(s) have no image (see report.md)")
    for kind, path in written.items():
        click.echo(f"wrote {kind}: {path}")
