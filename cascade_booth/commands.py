"""The CLI commands. Each parses flags into a finished, validated config + request and calls a stage or the runner.

The training commands' config flags come from one table (``cascade_booth.flags``): it makes their
click options here and maps the values given to config fields (``config.override`` applies them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import click

from cascade_booth.clikit import TqdmCallbacks, class_progress, friendly
from cascade_booth.config import Config, ModelConfig, RenderConfig, load_config, override
from cascade_booth.config_checks import check_flags, choices_of
from cascade_booth.errors import InputError
from cascade_booth.flags import Flag, flags_of, overrides
from cascade_booth.presets import offline_presets, preset_names

DATA = Path(__file__).parent / "data"


def stage_config(cfg: Config, stage: str, settings: dict[str, Any]) -> Config:
    """``cfg`` with the config flags of ``stage``'s command that were given, validated once."""
    values, names = overrides(stage, settings)
    return override(cfg, values, names)


def _train_stage(stage: str, label: str, request) -> None:
    from cascade_booth import parallel
    from stages import run_stage

    ctx = run_stage(stage, request, TqdmCallbacks(label), class_progress())
    if not parallel.is_main():  # under a launcher the main process speaks for all
        return
    for warning in ctx.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    click.echo(f"{label} done: {ctx.run.stage_dir(stage)} (identifier '{ctx.identifier}')")


def _builtin_default() -> str:
    offline = " or ".join(f"--config {name}" for name in offline_presets())
    return (f"the built-in IF-XL settings ({ModelConfig.base} + {ModelConfig.sr}, downloaded from the hub)"
            + (f"; offline: {offline}" if offline else ""))


def _option_type(flag: Flag, stage: str) -> dict[str, Any]:
    """The click type of ``flag``: its field's type, a choice where the config has choices, a switch for a bool."""
    section, _, key = flag.targets(stage)[0].rpartition(".")
    table = type(getattr(Config(), section)) if section else Config
    typ = get_type_hints(table)[key]
    if typ is bool:
        return {"default": None}
    choices = choices_of(table, key)
    return {"type": click.Choice(choices)} if choices else {"type": typ}


def config_options(stage: str) -> Callable:
    """The config flags of ``stage``'s training command, one click option per row of ``flags.TABLE``."""
    def decorate(fn: Callable) -> Callable:
        for flag in reversed(flags_of(stage)):
            fn = click.option(flag.decl, flag.param, help=flag.help_for(stage) or None,
                              **_option_type(flag, stage))(fn)
        return fn

    return decorate


def run_options(config_default: str) -> Callable:
    """The flags both training commands share that are not config fields: the run and how to open it."""
    options = [
        click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder."),
        click.option("--config", help=f"Preset ({', '.join(preset_names())}) or TOML file.  "
                                      f"[default: {config_default}]"),
        click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint."),
        click.option("--allow-drift", is_flag=True, help="Resume even if settings changed."),
        click.option("--allow-pickle", is_flag=True,
                     help="Also load pickled weights (.bin/.ckpt): only from sources you trust."),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@click.command("train-base")
@click.option("--subject", required=True, type=click.Path(path_type=Path), help="Folder of 3-5 subject photos.")
@click.option("--class-noun", required=True, help="The subject's class, e.g. 'clock'.")
@run_options(_builtin_default())
@config_options("base")
@click.option("--identifier", help="Use this as [V] instead of choosing a rare token (one word; a string of "
              "several pieces is allowed, with a warning).")
@click.option("--force", is_flag=True, help="Start stage one over in an existing run folder.")
@friendly
def train_base(subject: Path, class_noun: str, run_dir: Path, config: str | None, resume: bool, allow_drift: bool,
               allow_pickle: bool, identifier: str | None, force: bool, **settings: Any) -> None:
    """Stage one: fine-tune the 64 px model on the subject with prior preservation."""
    from cascade_booth.session import TrainRequest

    request = TrainRequest(subject=subject, class_noun=class_noun, run=run_dir,
                           config=stage_config(load_config(config), "base", settings), identifier=identifier,
                           resume=resume, force=force, allow_drift=allow_drift, allow_pickle=allow_pickle)
    _train_stage("base", "stage one", request)


@click.command("train-sr")
@run_options("the run's recorded config")
@config_options("sr")
@friendly
def train_sr(run_dir: Path, config: str | None, resume: bool, allow_drift: bool, allow_pickle: bool,
             **settings: Any) -> None:
    """Stage two: fine-tune the 64 -> 256 super-resolution model on the run's subject photos."""
    from stages.sr import SRRequest, starting_config

    cfg = stage_config(starting_config(run_dir, config), "sr", settings)
    request = SRRequest(run=run_dir, config=cfg, resume=resume, allow_drift=allow_drift, allow_pickle=allow_pickle)
    _train_stage("sr", "stage two", request)


@click.command("render")
@click.argument("prompts", nargs=-1)
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="A personalized run ([V] becomes its identifier). Without it: the pretrained cascade of --config.")
@click.option("--config", help="Without --run: render this preset's pretrained models, e.g. --config world.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder (default RUN/renders, or ./renders without a run); never overwritten.")
@click.option("--num-images", type=int)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int)
@click.option("--guidance", type=float)
@click.option("--no-sr", is_flag=True, help="Stop after stage one.")
@click.option("--sr-strength", type=float,
              help="Stage two's img2img strength in (0, 1] (default: the config's render.sr_strength); needs "
                   "render.sr_start = 'input'.")
@click.option("--prompts-file", type=click.Path(path_type=Path), help="One prompt with [V] per line.")
@click.option("--upscale", is_flag=True, help="Add stage III (x4 upscaler, not fine-tuned).")
@click.option("--class-prompts", is_flag=True,
              help="Also render each prompt without its [V] ('a [V] vase' -> 'a vase'): drift beside personalization.")
@friendly
def render(prompts, run_dir, config, out, num_images, seed, steps, guidance, no_sr, sr_strength, prompts_file,
           upscale, class_prompts) -> None:
    """Render prompts through the personalized cascade (--run), or the pretrained one (--config)."""
    from cascade_booth.runner import RenderRequest, render_run

    check_flags({"--num-images": (RenderConfig, "num_images", num_images), "--seed": (Config, "seed", seed),
                 "--steps": (RenderConfig, "steps", steps), "--guidance": (RenderConfig, "guidance", guidance),
                 "--sr-strength": (RenderConfig, "sr_strength", sr_strength)})
    if run_dir is not None and config is not None:
        raise InputError("--config with --run: a run renders with its own recorded config; drop --config")
    request = RenderRequest(run=run_dir, prompts=list(prompts), prompts_file=prompts_file, out=out,
                            num_images=num_images, seed=seed, steps=steps, guidance=guidance, sr=not no_sr,
                            upscale=upscale, class_prompts=class_prompts, sr_strength=sr_strength,
                            config=None if run_dir is not None or config is None else load_config(config))
    for path in render_run(request):
        click.echo(str(path))


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("cascade-booth-demo"), show_default=True)
@friendly
def demo(out: Path) -> None:
    """Offline: personalize the world cascade on a held-out world subject, render it in new contexts, report."""
    from cascade_booth.demo import run_demo
    from cascade_booth.world.readback import summary_lines

    start = time.perf_counter()
    result = run_demo(out)  # it replaces only folders an earlier demo made
    click.echo("")
    click.echo("\n".join(summary_lines(result.figures)))
    click.echo(f"wrote {result.grid}")
    click.echo(f"report: {result.report}")
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s.")
    click.echo(
        "On a GPU, personalize DeepFloyd IF with the paper's settings:\n"
        "  cascade-booth train-base --config if-xl --subject PHOTOS --class-noun clock --run runs/clock\n"
        "  cascade-booth train-sr --config if-xl --run runs/clock\n"
        "  cascade-booth render 'a [V] clock in the jungle' --run runs/clock"
    )
