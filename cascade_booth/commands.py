"""The CLI commands. Each parses flags into a config + request and calls a stage or the runner."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from cascade_booth.clikit import TqdmCallbacks, class_progress, friendly
from cascade_booth.config import (
    MIXED_PRECISION,
    OPTIMIZERS,
    Config,
    ModelConfig,
    RenderConfig,
    apply_overrides,
    check_flags,
    load_config,
)
from cascade_booth.presets import offline_presets, preset_names

DATA = Path(__file__).parent / "data"


def _config(config: str | None, model: str | None, seed: int | None) -> Config:
    cfg = load_config(config)
    if model is not None:
        cfg.model.base = model
        cfg.model.sr = model
    return apply_overrides(cfg, "", seed=seed)


def _train_stage(stage: str, label: str, request) -> None:
    from cascade_booth import parallel
    from stages import run_stage

    ctx = run_stage(stage, request, TqdmCallbacks(label), class_progress())
    if not parallel.is_main():  # under a launcher the main process speaks for all
        return
    for warning in ctx.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    click.echo(f"{label} done: {ctx.run.stage_dir(stage)} (identifier '{ctx.identifier}')")


def _allow_pickle(ctx, param, value: bool) -> bool:
    if value:
        os.environ["CASCADE_BOOTH_ALLOW_PICKLE"] = "1"
    return value


def _builtin_default() -> str:
    offline = " or ".join(f"--config {name}" for name in offline_presets())
    return (f"the built-in IF-XL settings ({ModelConfig.base} + {ModelConfig.sr}, downloaded from the hub)"
            + (f"; offline: {offline}" if offline else ""))


def common_train_options(section: str, config_default: str):
    """The flags both training commands share; ``section`` is the config table they override."""
    def decorate(fn):
        for option in reversed(_train_options(section, config_default)):
            fn = option(fn)
        return fn

    return decorate


def _train_options(section: str, config_default: str) -> list:
    over = f"Overrides [{section}]"
    return [
        click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder."),
        click.option("--config", help=f"Preset ({', '.join(preset_names())}) or TOML file.  "
                                      f"[default: {config_default}]"),
        click.option("--model", help="Override both stages' model: hub id, local folder or 'tiny'."),
        click.option("--steps", type=int, help=f"Optimizer steps. {over} steps; --resume may raise it."),
        click.option("--batch-size", type=int, help=f"{over} batch_size."),
        click.option("--lr", type=float, help=f"Learning rate, in (0, 1]. {over} lr."),
        click.option("--lora-rank", type=int, help=f"{over} lora_rank."),
        click.option("--full/--lora", "full", default=None, help="Full fine-tune instead of LoRA."),
        click.option("--seed", type=int, help="Overrides the config's seed (>= 0)."),
        click.option("--checkpoint-every", type=int, help=f"0: no checkpoints. {over} checkpoint_every."),
        click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION)),
        click.option("--compile/--no-compile", "compile_unet", default=None, help="torch.compile the UNet."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS),
                     help="adamw-in-backward: update inside backward, bf16 moments (full fine-tunes in less memory)."),
        click.option("--max-grad-norm", type=float, help="Clip the global gradient norm (0: no clipping)."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", "checkpointing", default=None,
                     help="Recompute activations in backward: less memory, about 30% slower."),
        click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint."),
        click.option("--allow-drift", is_flag=True, help="Resume even if settings changed."),
        click.option("--allow-pickle", is_flag=True, callback=_allow_pickle, expose_value=False,
                     help="Also load pickled weights (.bin/.ckpt): only from sources you trust."),
    ]


@click.command("train-base")
@click.option("--subject", required=True, type=click.Path(path_type=Path), help="Folder of 3-5 subject photos.")
@click.option("--class-noun", required=True, help="The subject's class, e.g. 'clock'.")
@common_train_options("base", _builtin_default())
@click.option("--prior/--no-prior", default=None, help="Class-specific prior preservation (default on).")
@click.option("--prior-weight", type=float, help="lambda in the prior-preservation loss (default 1).")
@click.option("--class-images", type=int, help="How many class images to generate/use.")
@click.option("--identifier", help="Use this rare token as [V] instead of choosing one.")
@click.option("--force", is_flag=True, help="Start stage one over in an existing run folder.")
@friendly
def train_base(subject, class_noun, run_dir, config, model, steps, batch_size, lr, lora_rank, full, seed,
               checkpoint_every, mixed_precision, compile_unet, optimizer, max_grad_norm, checkpointing, resume,
               allow_drift, prior, prior_weight, class_images, identifier, force) -> None:
    """Stage one: fine-tune the 64 px model on the subject with prior preservation."""
    from cascade_booth.session import TrainRequest

    cfg = _config(config, model, seed)
    apply_overrides(cfg, "base", steps=steps, batch_size=batch_size, lr=lr, lora_rank=lora_rank, full=full,
                    checkpoint_every=checkpoint_every, mixed_precision=mixed_precision, compile=compile_unet,
                    optimizer=optimizer, max_grad_norm=max_grad_norm, gradient_checkpointing=checkpointing)
    apply_overrides(cfg, "prior", enabled=prior, weight=prior_weight, class_images=class_images)
    request = TrainRequest(subject=subject, class_noun=class_noun, run=run_dir, config=cfg,
                           identifier=identifier, resume=resume, force=force, allow_drift=allow_drift)
    _train_stage("base", "stage one", request)


@click.command("train-sr")
@common_train_options("sr", "the run's recorded config")
@click.option("--noise-level", type=int, help="Noise-augmentation level of the 64 px input (0-999).")
@click.option("--prompt", "prompt_kind", type=click.Choice(["instance", "class"]), help="Training prompt.")
@friendly
def train_sr(run_dir, config, model, steps, batch_size, lr, lora_rank, full, seed, checkpoint_every,
             mixed_precision, compile_unet, optimizer, max_grad_norm, checkpointing, resume, allow_drift,
             noise_level, prompt_kind) -> None:
    """Stage two: fine-tune the 64 -> 256 super-resolution model on the run's subject photos."""
    from stages.sr import SRRequest

    request = SRRequest(run=run_dir, config=config, model=model, seed=seed, resume=resume,
                        allow_drift=allow_drift)
    request.overrides = dict(steps=steps, batch_size=batch_size, lr=lr, lora_rank=lora_rank, full=full,
                             checkpoint_every=checkpoint_every, mixed_precision=mixed_precision,
                             compile=compile_unet, optimizer=optimizer, max_grad_norm=max_grad_norm,
                             gradient_checkpointing=checkpointing, noise_level=noise_level, prompt=prompt_kind)
    _train_stage("sr", "stage two", request)


@click.command("render")
@click.argument("prompts", nargs=-1)
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN/renders).")
@click.option("--num-images", type=int)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int)
@click.option("--guidance", type=float)
@click.option("--no-sr", is_flag=True, help="Stop after stage one (64 px).")
@click.option("--prompts-file", type=click.Path(path_type=Path), help="One prompt with [V] per line.")
@click.option("--upscale", is_flag=True, help="Add stage III (x4 upscaler, not fine-tuned).")
@friendly
def render(prompts, run_dir, out, num_images, seed, steps, guidance, no_sr, prompts_file, upscale) -> None:
    """Render prompts with [V] through the personalized cascade."""
    from cascade_booth.runner import RenderRequest, render_run

    check_flags({"--num-images": (RenderConfig, "num_images", num_images), "--seed": (Config, "seed", seed),
                 "--steps": (RenderConfig, "steps", steps), "--guidance": (RenderConfig, "guidance", guidance)})
    request = RenderRequest(run=run_dir, prompts=list(prompts), prompts_file=prompts_file, out=out,
                            num_images=num_images, seed=seed, steps=steps, guidance=guidance, sr=not no_sr,
                            upscale=upscale)
    for path in render_run(request):
        click.echo(str(path))


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("cascade-booth-demo"), show_default=True)
@friendly
def demo(out: Path) -> None:
    """Offline end-to-end run on the bundled DreamBench clock photos and the tiny random cascade."""
    from cascade_booth.demo import run_demo

    start = time.perf_counter()
    images = run_demo(out)  # it replaces only a run folder an earlier demo made
    click.echo("")
    for path in images:
        click.echo(f"wrote {path}")
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s.")
    click.echo(
        "The tiny cascade has random weights, so these images are noise: the demo proves the pipeline, not quality.\n"
        "On a GPU, personalize DeepFloyd IF with the paper's settings:\n"
        "  cascade-booth train-base --config if-xl --subject PHOTOS --class-noun clock --run runs/clock\n"
        "  cascade-booth train-sr --config if-xl --run runs/clock\n"
        "  cascade-booth render 'a [V] clock in the jungle' --run runs/clock"
    )
