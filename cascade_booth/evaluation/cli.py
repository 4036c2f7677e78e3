"""``cascade-booth evaluate``: the paper's metrics (section 4.1) for generated images of one subject.

The main CLI attaches this command with ``main.add_command(evaluate)`` and turns
:class:`cascade_booth.errors.BoothError` into a clean message and a non-zero exit.
"""

from __future__ import annotations

from pathlib import Path

import click

from cascade_booth.errors import InputError
from cascade_booth.evaluation.extractors import DEFAULT_CLIP, DEFAULT_DINO, load_extractors, resolve_device
from cascade_booth.evaluation.inputs import discover_generated, discover_run, list_subject_images
from cascade_booth.evaluation.prompts import resolve_prompts
from cascade_booth.evaluation.report import fmt, write_reports
from cascade_booth.evaluation.runner import evaluate_subject, resolve_class_noun

DEFAULT_OUT_SUBDIR = "evaluation"


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


def _out_dir(out_dir: Path | None, run_dir: Path | None) -> Path:
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"--out {out_dir}: exists and is not a folder")
        return out_dir
    if run_dir is not None:
        return run_dir / DEFAULT_OUT_SUBDIR
    raise InputError("--out DIR is needed with --generated (with --run it defaults to RUN/evaluation)")


@click.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder; evaluates the PNGs under RUN/renders/.")
@click.option("--generated", type=click.Path(path_type=Path), default=None,
              help="Folder of generated PNGs, each with a 'prompt' in NAME.json or a PNG text chunk.")
@click.option("--subject", "subject_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the subject's real images.")
@click.option("--class-noun", default=None,
              help="Class noun (e.g. dog); read from metadata or DreamBench if omitted.")
@click.option("--identifier", default=None,
              help="The [V] token in the prompts; inferred from them if omitted.")
@click.option("--prompts", "prompts", default="dreambench", show_default=True,
              help="'dreambench' (object or live list by class) or a file with one [V] prompt per line.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where to write metrics.json, report.md and report.html [default: RUN/evaluation].")
@click.option("--dino-model", default=DEFAULT_DINO, show_default=True,
              help="DINO ViT hub id or local folder.")
@click.option("--clip-model", default=DEFAULT_CLIP, show_default=True, help="CLIP hub id or local folder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per extractor batch.")
@click.option("--html/--no-html", default=True, show_default=True, help="Also write the HTML page.")
def evaluate(run_dir, generated, subject_dir, class_noun, identifier, prompts, out_dir, dino_model,
             clip_model, device, batch_size, html):
    """Score generated images with DINO, CLIP-I, CLIP-T, PRES and DIV (DreamBooth paper, section 4.1)."""
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if subject_dir is None:
        raise InputError("--subject DIR is needed (the folder of the subject's real images)")
    images, skipped, sources = _inputs(run_dir, generated)
    out = _out_dir(out_dir, run_dir)
    # Check the cheap inputs before loading models, so mistakes are reported at once.
    list_subject_images(subject_dir)
    resolve_prompts(prompts, resolve_class_noun(class_noun, subject_dir, images))
    torch_device = resolve_device(device)
    dino, clip = load_extractors(dino_model, clip_model, device=torch_device)
    settings = {**sources, "device": str(torch_device), "skipped_files": [str(p) for p in skipped]}
    report = evaluate_subject(images, subject_dir, dino, clip, class_noun=class_noun, prompts=prompts,
                              identifier=identifier, batch_size=batch_size, settings=settings)
    written = write_reports(report, out, html=html)
    _echo_summary(report, written, skipped)


def _echo_summary(report: dict, written: dict, skipped: list) -> None:
    overall, real = report["overall"], report["overall"].get("real_images", {})
    click.echo(f"images: {overall['n_instance_images']} instance, {overall['n_class_images']} class-prompt"
               + (f" ({len(skipped)} PNG(s) without a prompt skipped)" if skipped else ""))
    click.echo(f"DINO {fmt(overall['dino'])}  CLIP-I {fmt(overall['clip_i'])}  "
               f"CLIP-T {fmt(overall['clip_t'])}  PRES {fmt(overall['pres'])}  "
               f"DIV {fmt(overall['div'])} ({report['settings']['div_metric']})")
    click.echo(f"real images: DINO {fmt(real.get('dino'))}  CLIP-I {fmt(real.get('clip_i'))}  "
               "(paper: 0.774 / 0.885)")
    missing = report.get("coverage", {}).get("missing_templates", [])
    if missing:
        click.echo(f"{len(missing)} expected prompt(s) have no image (see report.md)")
    for kind, path in written.items():
        click.echo(f"wrote {kind}: {path}")
