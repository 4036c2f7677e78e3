"""``cascade-booth sweep``: a thin client over :mod:`cascade_booth.sweep.run`.

The main CLI attaches it like ``evaluate``, wrapped so that :class:`cascade_booth.errors.BoothError`
becomes one clean message and a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cascade_booth.errors import InputError
from cascade_booth.sweep.spec import build_spec, flatten, load_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_scalar(raw: str) -> Any:
    """A CLI value as TOML (``1e-6``, ``4``, ``true``), else as the plain string (``wall clock``)."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def parse_assignments(flags: tuple[str, ...], flag: str, many: bool) -> dict[str, Any]:
    """``--grid base.lr=1e-6,5e-6`` -> ``{"base.lr": [1e-6, 5e-6]}``; ``--set base.steps=400`` -> one value."""
    out: dict[str, Any] = {}
    for text in flags:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            example = "base.lr=1e-6,5e-6" if many else "base.steps=400"
            raise InputError(f"{flag} {text!r}: expected KEY=VALUE{'[,VALUE...]' if many else ''}, e.g. "
                             f"{flag} {example}")
        values = [parse_scalar(part) for part in raw.split(",")] if many else parse_scalar(raw)
        out[key.strip()] = values
    return out


def merge_cli(data: dict[str, Any], grid: tuple[str, ...] = (), fixed: tuple[str, ...] = (),
              **options: Any) -> dict[str, Any]:
    """The spec file's dict with CLI flags on top (options that are None are not given)."""
    merged = {**data, **{key: value for key, value in options.items() if value is not None}}
    for key, flags, flag, many in (("grid", grid, "--grid", True), ("fixed", fixed, "--set", False)):
        table = merged.get(key, {})
        if flags and isinstance(table, dict):  # a grid / fixed that is not a table is build_spec's to refuse
            merged[key] = {**flatten(table), **parse_assignments(flags, flag, many)}
    return merged


def _echo_plan(plan) -> None:
    groups = len({pp.stage_one for pp in plan.points})
    click.echo(f"sweep: {len(plan.points)} point(s), {groups} stage-one run(s), "
               f"stage two {'on' if plan.spec.sr else 'off'} -> {plan.out}")
    for pp in plan.points:
        click.echo(f"  {pp.point.name}: {pp.status} (stage one {pp.stage_one.name})")


@click.command("sweep")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path),
              help="Sweep spec (TOML): config, subject, class_noun, prompts, [fixed], [grid].")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Sweep folder; rerun the same command to resume.")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="Add or replace a grid axis, e.g. --grid base.lr=1e-6,5e-6 (repeatable).")
@click.option("--set", "fixed", multiple=True, metavar="KEY=VALUE",
              help="A config value for every point, e.g. --set base.steps=400 (repeatable).")
@click.option("--config", help="Preset name (tiny, if-xl, if-m) or TOML file.")
@click.option("--subject", type=click.Path(path_type=Path), help="Folder of 3-5 subject photos.")
@click.option("--class-noun", help="The subject's class, e.g. 'clock' (or sweep it: --grid class_noun=...).")
@click.option("--prompts", help="'dreambench' (default) or a file with one [V] prompt per line.")
@click.option("--images-per-prompt", type=int, help="Images per prompt [default: the config's render.num_images].")
@click.option("--class-prompts/--no-class-prompts", default=None,
              help="Also render each prompt without [V] for PRES [default: on].")
@click.option("--sr/--no-sr", default=None,
              help="Train stage two and render through it [default: on when a setting is sr.*].")
@click.option("--dino-model", help="DINO model (hub id or folder).")
@click.option("--clip-model", help="CLIP model (hub id or folder).")
@click.option("--device", help="Device for DINO / CLIP: auto, cpu, cuda, ...")
@click.option("--dry-run", is_flag=True, help="Check the spec, list the points and their state, then stop.")
def sweep(spec_path, out_dir, grid, fixed, config, subject, class_noun, prompts, images_per_prompt, class_prompts,
          sr, dino_model, clip_model, device, dry_run) -> None:
    """Train, render and evaluate every point of a grid of settings; tables in OUT/sweep.md."""
    from cascade_booth.clikit import TqdmCallbacks, class_progress
    from cascade_booth.sweep.run import SweepHooks, plan_sweep, run_sweep

    data = load_spec(spec_path) if spec_path is not None else {}
    options = dict(config=config, subject=None if subject is None else str(subject), class_noun=class_noun,
                   prompts=prompts, images_per_prompt=images_per_prompt, class_prompts=class_prompts, sr=sr,
                   dino_model=dino_model, clip_model=clip_model, device=device)
    spec = build_spec(merge_cli(data, grid, fixed, **options), str(spec_path or "sweep"))
    plan = plan_sweep(spec, out_dir)
    _echo_plan(plan)
    if dry_run:
        return
    result = run_sweep(plan, SweepHooks(echo=click.echo, trainer=TqdmCallbacks, class_progress=class_progress))
    for metric, best in result["best"].items():
        if best is not None:
            click.echo(f"best {metric}: {best['point']} ({best['value']:.3f})")
