"""What to render and how: the request, each stage's plan, checked before any weights load.

A render has a *run* (the personalized cascade: each stage's LoRA or fine-tuned UNet, the run's
identifier filled into ``[V]``) or none: ``render --config world "a red vase on the beach"`` samples
the pretrained cascade itself, the paper's non-personalized baseline. Either way every model,
prompt and output folder is checked here, so a mistake costs no sampling time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_booth.config import Config, from_dict
from cascade_booth.errors import InputError, RunError
from cascade_booth.handoff import check_sr_model, finished_stage_one, text_model_path
from cascade_booth.identifier import PLACEHOLDER, class_prompt, fill_identifier
from cascade_booth.identifier_offset import KEEP_NORM, OFFSET_FILE, identifier_mask
from cascade_booth.lora import LORA_WEIGHTS
from cascade_booth.models import resolve_model
from cascade_booth.promptfile import prompt_lines
from cascade_booth.runfolder import RunFolder
from cascade_booth.text import MAX_LENGTH, check_prompts, load_tokenizer
from cascade_booth.writable import check_cache, check_writable

Warn = Callable[[str], None]


@dataclass
class RenderRequest:
    """What to render; None means the run's ``[render]`` config value.

    ``steps`` applies to both stages, ``guidance`` to stage one (stage two uses ``render.sr_guidance``).
    """

    run: Path | None  # None: the pretrained cascade of ``config`` (no [V], no adapters)
    prompts: list[str] = field(default_factory=list)
    prompts_file: Path | None = None
    out: Path | None = None
    num_images: int | None = None
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    sr: bool = True
    upscale: bool = False
    batch_size: int = 4
    warn: Warn | None = None  # default: print "warning: ..." on stderr
    class_prompts: bool = False  # also each prompt without [V], kind "class": PRES samples (paper section 4.1)
    config: Config | None = None  # without a run: whose models to sample (with a run: the run's own config)
    sr_strength: float | None = None  # stage two's img2img strength (None: render.sr_strength); needs sr_start "input"


@dataclass
class StagePlan:
    """One UNet to sample with: where it comes from and how to sample it."""

    name: str  # "base" or "sr"
    model: str  # the model spec (hub id, folder, "tiny")
    model_path: Path
    weights: Path | None  # LoRA file, full UNet folder, or None (un-personalized)
    variance: str
    steps: int
    guidance: float
    noise_level: int | None = None
    start: str = "noise"  # stage two's first sample (config.RenderConfig.sr_start)
    strength: float = 1.0  # with start "input": the fraction of its steps that run (config.RenderConfig.sr_strength)
    variance_type: str | None = None  # the scheduler's, once sampled (learned_range or fixed_small)
    offset: Path | None = None  # stage one's learned identifier offset (identifier_offset), if the run has one
    offset_keeps_norm: bool = True  # how it applies (identifier_offset.shift_states); False in runs made before

    @property
    def sr(self) -> bool:
        return self.name == "sr"


@dataclass
class Plan:
    run: RunFolder | None
    meta: dict[str, Any]  # run.json, or for the pretrained cascade just its models
    templates: list[str]
    prompts: list[str]
    out: Path
    num_images: int
    seed: int
    base: StagePlan
    sr: StagePlan | None
    upscaler: Path | None
    warnings: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # per prompt: "instance" ([V]) or "class"; empty: all instance
    text_model: Path | None = None  # stage one's folder: its T5 encodes the prompts of both stages
    identifier_masks: list[torch.Tensor] | None = None  # with base.offset: [V]'s token positions per prompt


def read_prompts(req: RenderRequest) -> list[str]:
    """Prompts from the request, then from ``prompts_file`` (one a line; blank and ``#`` lines skipped)."""
    prompts = list(req.prompts)
    if req.prompts_file is not None:
        path = Path(req.prompts_file)
        if not path.is_file():
            raise InputError(f"prompts file {path} does not exist")
        from_file = [line for _, line in prompt_lines(path)]
        if not from_file:
            raise InputError(f"prompts file {path} has no prompts (one prompt with [V] per line)")
        prompts += from_file
    if not prompts:
        raise InputError("no prompts: give one or more prompts with [V], e.g. 'a [V] clock in the jungle', "
                         "or --prompts-file")
    return prompts


def _stage_model(record: dict[str, Any], spec: str, stage: int) -> Path:
    recorded = Path(record.get("model_path", ""))
    return recorded if (recorded / "unet" / "config.json").is_file() else resolve_model(spec, stage)


def _weights(run: RunFolder, name: str, record: dict[str, Any]) -> Path:
    folder = run.stage_dir(name)
    path = folder / "unet" if "unet" in record.get("files", []) else folder / LORA_WEIGHTS
    if not path.exists():
        raise RunError(f"{run.path}: run.json says stage '{name}' finished but {path} is missing")
    return path


def plan_base(run: RunFolder, meta: dict[str, Any], cfg: Config, req: RenderRequest) -> StagePlan:
    record = finished_stage_one(run, meta)
    offset = run.stage_dir("base") / OFFSET_FILE if OFFSET_FILE in record.get("files", []) else None
    if offset is not None and not offset.exists():
        raise RunError(f"{run.path}: run.json says stage 'base' finished but {offset} is missing")
    return StagePlan("base", meta["models"]["base"], _stage_model(record, meta["models"]["base"], 1),
                     _weights(run, "base", record), record.get("variance", "learned"),
                     req.steps or cfg.render.steps, cfg.render.guidance if req.guidance is None else req.guidance,
                     offset=offset, offset_keeps_norm=record.get("identifier_offset") == KEEP_NORM)


def plan_sr(run: RunFolder, meta: dict[str, Any], cfg: Config, req: RenderRequest, notes: list[str]
            ) -> StagePlan | None:
    """Stage two's plan: the run's fine-tuned SR model, or the plain SR model with a warning."""
    if not req.sr:
        return None
    base, record = meta["stages"]["base"], meta.get("stages", {}).get("sr", {})
    steps, guidance = req.steps or cfg.render.sr_steps, cfg.render.sr_guidance
    if not record.get("done"):
        spec = meta["models"]["sr"]
        notes.append(f"{run.path} has no finished stage two: upsampling with the un-personalized SR model "
                        f"'{spec}' (no adapter). Train it with `cascade-booth train-sr --run {run.path}`.")
        path = resolve_model(spec, stage=2)
        check_sr_model(path, spec, int(base["resolution"]))
        return StagePlan("sr", spec, path, None, "learned", steps, guidance, cfg.sr.noise_level,
                         cfg.render.sr_start, _strength(cfg, req))
    trained_for = (record.get("base_resolution"), record.get("base_model"), record.get("identifier"))
    current = (base.get("resolution"), meta["models"]["base"], meta["identifier"])
    if trained_for != current:
        raise RunError(f"{run.path}: stage two was trained for another stage one (base resolution, model, "
                       f"identifier {trained_for} vs now {current}); retrain it with "
                       f"`cascade-booth train-sr --run {run.path}` or render with --no-sr")
    path = _stage_model(record, record["model"], 2)
    check_sr_model(path, record["model"], int(base["resolution"]))
    return StagePlan("sr", record["model"], path, _weights(run, "sr", record), record.get("variance", "learned"),
                     steps, guidance, int(record["noise_level"]), cfg.render.sr_start, _strength(cfg, req))


def _strength(cfg: Config, req: RenderRequest) -> float:
    """Stage two's img2img strength: the request's, else the config's; checked against its start."""
    strength = cfg.render.sr_strength if req.sr_strength is None else req.sr_strength
    if strength < 1 and cfg.render.sr_start != "input":
        raise InputError(f"--sr-strength {strength:g} needs render.sr_start = \"input\" (this config samples stage "
                         f"two from pure noise, '{cfg.render.sr_start}')")
    return strength


def plan_upscaler(cfg: Config, req: RenderRequest) -> Path | None:
    """Stage III (x4 upscaler, not fine-tuned): resolved now, so a missing model fails before sampling."""
    if not req.upscale:
        return None
    if not req.sr:
        raise InputError("--upscale needs stage two's 256 px output: drop --no-sr")
    if cfg.model.upscaler in ("", "none", "tiny"):
        raise InputError("this run's config has no stage III upscaler (model.upscaler = "
                         f"'{cfg.model.upscaler}'; the tiny preset has none): drop --upscale")
    return resolve_model(cfg.model.upscaler, stage=3)


def plan_pretrained(req: RenderRequest) -> Plan:
    """The pretrained cascade of ``req.config``: prompts as written (no [V]), no adapters."""
    cfg = req.config
    if cfg is None:
        raise InputError("render needs --run RUN (a personalized cascade) or --config (its pretrained models)")
    if req.class_prompts:
        raise InputError("--class-prompts needs --run: without a run every prompt already is a class prompt")
    templates = read_prompts(req)
    for prompt in templates:
        if PLACEHOLDER in prompt:
            raise InputError(f"prompt '{prompt}' has {PLACEHOLDER}, which only a run can fill: pass --run RUN, "
                             f"or write the object itself, e.g. '{prompt.replace(PLACEHOLDER, 'red')}'")
    num_images = _num_images(cfg, req)
    base_path = resolve_model(cfg.model.base, stage=1)
    guidance = cfg.render.guidance if req.guidance is None else req.guidance
    base = StagePlan("base", cfg.model.base, base_path, None, "learned", req.steps or cfg.render.steps, guidance)
    sr = None
    if req.sr:
        sr_path = resolve_model(cfg.model.sr, stage=2)
        check_sr_model(sr_path, cfg.model.sr, _resolution(base_path))
        sr = StagePlan("sr", cfg.model.sr, sr_path, None, "learned", req.steps or cfg.render.sr_steps,
                       cfg.render.sr_guidance, cfg.sr.noise_level, cfg.render.sr_start, _strength(cfg, req))
    notes = check_prompts(load_tokenizer(base_path), templates, templates)
    out = Path(req.out) if req.out is not None else Path("renders")
    check_writable(out, "--out")
    check_cache()
    meta = {"identifier": None, "class_noun": None, "models": {"base": cfg.model.base, "sr": cfg.model.sr}}
    return Plan(None, meta, templates, list(templates), out, num_images, req.seed, base, sr, plan_upscaler(cfg, req),
                notes, text_model=base_path)


def _resolution(model_path: Path) -> int:
    import json

    return int(json.loads((model_path / "unet" / "config.json").read_text())["sample_size"])


def _num_images(cfg: Config, req: RenderRequest) -> int:
    num_images = cfg.render.num_images if req.num_images is None else req.num_images
    if num_images < 1 or (req.steps is not None and req.steps < 1):
        raise InputError("--num-images and --steps must be >= 1")
    return num_images


def plan_render(req: RenderRequest) -> Plan:
    """Validate the whole request (run, prompts, stages, models) without loading any weights."""
    if req.run is None:
        return plan_pretrained(req)
    run = RunFolder(req.run)
    meta = run.read()
    cfg = from_dict(Config, meta.get("config", {}), f"{run.meta_file} config")
    templates = read_prompts(req)
    prompts = [fill_identifier(t, meta["identifier"]) for t in templates]
    kinds = ["instance"] * len(templates)
    if req.class_prompts:  # one sampling pass (one load of each stage) for both kinds
        extra = list(dict.fromkeys(class_prompt(t) for t in templates))
        templates, prompts, kinds = templates + extra, prompts + extra, kinds + ["class"] * len(extra)
    num_images = _num_images(cfg, req)
    notes: list[str] = []
    base = plan_base(run, meta, cfg, req)
    sr = plan_sr(run, meta, cfg, req, notes)
    upscaler = plan_upscaler(cfg, req)
    tokenizer = load_tokenizer(text_model_path(meta))
    notes += check_prompts(tokenizer, templates, prompts)  # before any model loads
    masks = None if base.offset is None else [identifier_mask(tokenizer, t, meta["identifier"], MAX_LENGTH)
                                              for t in templates]
    out = Path(req.out) if req.out is not None else run.path / "renders"
    check_writable(out, "--out" if req.out is not None else "render folder")
    check_cache()
    return Plan(run, meta, templates, prompts, out, num_images, req.seed, base, sr, upscaler, notes, kinds,
                text_model_path(meta), masks)
