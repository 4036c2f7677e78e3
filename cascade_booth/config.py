"""Typed run configuration: dataclasses, TOML presets under ``configs/``, strict validation.

The ranges and choices of the settings, and ``validate``, live in ``cascade_booth.config_checks``.

A preset is a TOML file whose tables mirror these dataclasses; any key not defined here is an error
that names the file and the key (with a suggestion), so a typo never silently trains with defaults.
CLI flags and sweep points override file values (``override``; the flags: ``cascade_booth.flags``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from cascade_booth.config_checks import validate
from cascade_booth.errors import InputError
from cascade_booth.flags import flag_name
from cascade_booth.presets import CONFIG_DIR as CONFIG_DIR  # re-exported: where the presets are
from cascade_booth.presets import offline_presets as offline_presets
from cascade_booth.presets import resolve_config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    """Where the cascade comes from: ``tiny``, a hub id, or a local diffusers folder."""

    base: str = "DeepFloyd/IF-I-XL-v1.0"
    sr: str = "DeepFloyd/IF-II-L-v1.0"
    upscaler: str = "stabilityai/stable-diffusion-x4-upscaler"


@dataclass
class IdentifierConfig:
    """Rare-token identifier [V] (paper section 4.2): T5 rank range and maximum length.

    ``offset_lr`` > 0: stage one also learns an offset on [V]'s text states, at this learning rate
    (``cascade_booth.identifier_offset``); 0 keeps the paper's fixed token.
    """

    rank_min: int = 5000
    rank_max: int = 10000
    max_chars: int = 3
    offset_lr: float = 0.0


@dataclass
class PriorConfig:
    """Class-specific prior preservation (paper section 3.3)."""

    enabled: bool = True
    weight: float = 1.0
    class_images: int = 200
    sampler: str = "dpm++"
    sample_steps: int = 25
    guidance: float = 7.0
    batch_size: int = 8
    # Also class images of "<class prompt> <context>" for each context (e.g. "in the snow"), class_images split
    # evenly between the class prompt and these, each trained with its own prompt. Empty: the paper's single class
    # prompt "a <class noun>". On the world it kept no more of the class prior and cost [V]'s colour (README).
    contexts: list[str] = field(default_factory=list)


@dataclass
class StageConfig:
    """Training settings shared by both stages."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 5e-6
    lora_rank: int = 4
    # LoRA also on the text keys/values (add_k_proj / add_v_proj). Off: image-side projections only, so the
    # class noun's own text path is left as it was (less language drift); [V] is then bound through the
    # learned identifier offset ([identifier] offset_lr) and the queries.
    lora_text: bool = True
    full: bool = False
    optimizer: str = "adamw"  # or "adamw-in-backward" (config_checks.OPTIMIZERS): full fine-tunes in less memory
    variance: str = "learned"
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    max_grad_norm: float = 1.0
    # Per-sample loss weight min(1 / alpha_bar_t, cap): the error of the implied x0 where the image is mostly noise
    # (Salimans & Ho 2022's truncated-SNR weighting, capped); 1 keeps IF's plain epsilon loss. diffusion.loss_weights.
    x0_weight_cap: float = 1.0
    # Standard deviation of a per-image, per-channel constant added to the training noise (offset noise,
    # diffusion.training_losses): 0 is IF's plain noise; a model pretrained with it is fine-tuned with it.
    offset_noise: float = 0.0
    warmup_steps: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    validation_every: int = 0
    max_bad_steps: int = 5


@dataclass
class SRConfig(StageConfig):
    """Stage two: super-resolution fine-tune; ``noise_level`` is the augmentation level of the 64 px input."""

    lr: float = 1e-6
    noise_level: int = 100
    prompt: str = "instance"
    # Stage two's class prior (cascade_booth/sr_prior.py): this many of stage one's class images, upsampled by the
    # frozen SR as the runner samples, trained beside the subject's pairs with the class prompt and [prior] weight.
    # 0: the paper's stage two, subject pairs only.
    class_images: int = 0
    # > 1: the class pairs' loss compares only class_block x class_block means of the error (losses.coarse_error):
    # the frozen SR's colours are kept, its fine detail is not taught. 1: the full loss, as for the subject.
    class_block: int = 1
    # > 0: train on a random crop x crop window of each pair, the same window of the target and of the conditioning,
    # cut after the conditioning is upsampled and noised as at inference (diffusion.paired_crop). Fine detail is
    # local; a window costs (crop / resolution)^2 of a whole image. Imagen trains its 1024 px super-resolution
    # model on crops the same way (Saharia et al. 2022, appendix). 0: whole images.
    crop: int = 0


@dataclass
class RenderConfig:
    steps: int = 50
    guidance: float = 7.0
    sr_steps: int = 50
    sr_guidance: float = 4.0
    num_images: int = 4
    # Stage two's first sample: "noise" (IFSuperResolutionPipeline) or "input": the upsampled 64 px image noised
    # to the first timestep (IFImg2ImgSuperResolutionPipeline at strength 1). See sampling.sample_sr.
    sr_start: str = "noise"
    # With sr_start = "input": the fraction of stage two's steps that run, from the upsampled input noised to that
    # point (IFImg2ImgSuperResolutionPipeline's strength); 1 = every step. See sampling.sample_sr.
    sr_strength: float = 1.0


@dataclass
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    identifier: IdentifierConfig = field(default_factory=IdentifierConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    base: StageConfig = field(default_factory=StageConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def suggest(key: str, options: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option to a mistyped ``key``, or ``""``."""
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ == list[str]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise InputError(f"{where}: expected a list of strings, got {value!r}")
    raise InputError(f"{where}: expected {typ.__name__}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(f"{where}: unknown key '{key}'{suggest(key, names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise InputError(f"{where}: '{key}' must be a table")
            kwargs[key] = from_dict(typ, value, f"{where} [{key}]")
        else:
            kwargs[key] = _coerce(value, typ, f"{where}: '{key}'")
    return cls(**kwargs)


def load_config(name_or_path: str | os.PathLike | None) -> Config:
    if name_or_path is None:
        cfg, where = validate(Config(), "built-in defaults"), "built-in defaults"
    else:
        path = resolve_config_path(str(name_or_path))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not valid TOML: {err}") from None
        cfg, where = validate(from_dict(Config, data, str(path)), str(path)), str(path)
    cfg._where = where  # not a field (never in to_dict / run.json): names the file in later errors
    return cfg


def override(cfg: Config, values: dict[str, Any], flags: dict[str, str] | None = None,
             where: str | None = None) -> Config:
    """The one way to change a loaded config (CLI flags, sweep points, API overrides): set, then validate once.

    ``values`` maps ``section.key`` (``key`` at the top level) to a value; None means not given. A
    key in ``flags`` (``section.key -> --flag``, from ``cascade_booth.flags``) is remembered as set by
    that flag, so that ``validate`` names a bad value by what the user typed, now and after later
    overrides; any other is named by its TOML key after ``where`` (default: the file it came from).
    """
    known: dict[tuple[str, str], str] = getattr(cfg, "_flags", {})
    for dotted, value in values.items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        target = getattr(cfg, section) if section else cfg
        if not hasattr(target, key):
            raise KeyError(f"no config field '{dotted}'")  # a bug in a caller, not bad input
        setattr(target, key, value)
        if flags and dotted in flags:
            known[(section, key)] = flags[dotted]
    cfg._flags = known  # not a field, like ``_where``
    return validate(cfg, where or getattr(cfg, "_where", "command-line options"))


def apply_overrides(cfg: Config, section: str, **values: Any) -> Config:
    """``override`` for keys of one table, each named by its flag (``cascade_booth.flags``) in errors."""
    dotted = {f"{section}.{key}" if section else key: value for key, value in values.items()}
    return override(cfg, dotted, {d: flag_name(section, d.rpartition(".")[2]) for d in dotted})
