"""Typed run configuration: dataclasses, TOML presets under ``configs/``, strict validation.

A preset is a TOML file whose tables mirror these dataclasses; any key not defined here is an error
that names the file and the key (with a suggestion), so a typo never silently trains with defaults.
CLI flags override file values (``apply_overrides``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from cascade_booth.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw-in-backward")  # built by cascade_booth.optim.make_optimizer


@dataclass
class ModelConfig:
    """Where the cascade comes from: ``tiny``, a hub id, or a local diffusers folder."""

    base: str = "DeepFloyd/IF-I-XL-v1.0"
    sr: str = "DeepFloyd/IF-II-L-v1.0"
    upscaler: str = "stabilityai/stable-diffusion-x4-upscaler"


@dataclass
class IdentifierConfig:
    """Rare-token identifier [V] (paper section 4.2): T5 rank range and maximum length."""

    rank_min: int = 5000
    rank_max: int = 10000
    max_chars: int = 3


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


@dataclass
class StageConfig:
    """Training settings shared by both stages."""

    steps: int = 1000
    batch_size: int = 1
    lr: float = 5e-6
    lora_rank: int = 4
    full: bool = False
    optimizer: str = "adamw"  # or "adamw-in-backward": full fine-tunes in less memory (cascade_booth/optim.py)
    variance: str = "learned"
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    max_grad_norm: float = 1.0
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


@dataclass
class RenderConfig:
    steps: int = 50
    guidance: float = 7.0
    sr_steps: int = 50
    sr_guidance: float = 4.0
    num_images: int = 4


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


def validate(cfg: Config, where: str = "config") -> Config:
    """Range checks that apply whatever the source of the values."""
    from cascade_booth.optim import in_backward_problems  # imports torch: only when checking

    problems = []
    for name in ("base", "sr"):
        stage: StageConfig = getattr(cfg, name)
        for key in ("steps", "batch_size", "lora_rank", "gradient_accumulation", "keep_checkpoints"):
            if getattr(stage, key) < 1:
                problems.append(f"[{name}] {key} must be >= 1")
        if not 0 < stage.lr <= 1:  # also rejects nan/inf: AdamW would fail mid-run on them
            problems.append(f"[{name}] lr must be in (0, 1], got {stage.lr}")
        if stage.mixed_precision not in MIXED_PRECISION:
            problems.append(f"[{name}] mixed_precision must be one of {MIXED_PRECISION}")
        if stage.optimizer not in OPTIMIZERS:
            problems.append(f"[{name}] optimizer must be one of {OPTIMIZERS}, got '{stage.optimizer}'")
        # processes=1: the number of processes is the trainer's to check, for the stage that trains
        problems += [f"[{name}] {p}" for p in in_backward_problems(stage, processes=1)]
        if stage.variance not in ("learned", "fixed"):
            problems.append(f"[{name}] variance must be 'learned' or 'fixed'")
        if stage.checkpoint_every < 0 or stage.validation_every < 0:
            problems.append(f"[{name}] checkpoint_every / validation_every must be >= 0")
    if not 0 <= cfg.sr.noise_level < 1000:
        problems.append("[sr] noise_level must be in 0..999")
    if cfg.sr.prompt not in ("instance", "class"):
        problems.append("[sr] prompt must be 'instance' or 'class'")
    if cfg.prior.class_images < 1 or cfg.prior.batch_size < 1 or cfg.prior.sample_steps < 1:
        problems.append("[prior] class_images, batch_size and sample_steps must be >= 1")
    if cfg.prior.sampler not in ("ddpm", "dpm++"):
        problems.append("[prior] sampler must be 'ddpm' or 'dpm++'")
    if not 0 <= cfg.identifier.rank_min < cfg.identifier.rank_max:
        problems.append("[identifier] need 0 <= rank_min < rank_max")
    if problems:
        raise InputError(f"{where}: " + "; ".join(problems))
    return cfg


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``tiny``, ``if-xl``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        presets = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise InputError(f"config '{name_or_path}' not found (presets: {', '.join(presets)})")
    return path


def load_config(name_or_path: str | os.PathLike | None) -> Config:
    if name_or_path is None:
        return validate(Config(), "defaults")
    path = resolve_config_path(str(name_or_path))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid TOML: {err}") from None
    return validate(from_dict(Config, data, str(path)), str(path))


def apply_overrides(cfg: Config, section: str, **values: Any) -> Config:
    """Set ``cfg.<section>.<key> = value`` for every value that is not None (CLI flags)."""
    target = getattr(cfg, section) if section else cfg
    for key, value in values.items():
        if value is not None:
            setattr(target, key, value)
    return validate(cfg, "command-line options")
