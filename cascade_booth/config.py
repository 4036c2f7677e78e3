"""Typed run configuration: dataclasses, TOML presets under ``configs/``, strict validation.

A preset is a TOML file whose tables mirror these dataclasses; any key not defined here is an error
that names the file and the key (with a suggestion), so a typo never silently trains with defaults.
CLI flags and sweep points override file values (``override``; the flags: ``cascade_booth.flags``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from cascade_booth.errors import InputError
from cascade_booth.flags import flag_name
from cascade_booth.presets import CONFIG_DIR as CONFIG_DIR  # re-exported: where the presets are
from cascade_booth.presets import offline_presets as offline_presets
from cascade_booth.presets import resolve_config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


@dataclass(frozen=True)
class Range:
    """The sane values of one numeric setting: finite, ``low <= v`` (``low < v`` if ``open_low``), ``v <= high``."""

    low: float
    high: float | None = None
    open_low: bool = False
    hint: str = ""

    def problem(self, value: float) -> str | None:
        # ints skip isfinite: a huge TOML int would overflow float() and is refused by ``high`` where it matters
        bad = isinstance(value, float) and not math.isfinite(value)
        bad = bad or value < self.low or (self.open_low and value == self.low)
        if not bad and (self.high is None or value <= self.high):
            return None
        return f"must be {self}, got {value}{self.hint}"

    def __str__(self) -> str:
        low, high = (f"{v:g}" if isinstance(v, float) else str(v) for v in (self.low, self.high))
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {low}"
        return f"in ({low}, {high}]" if self.open_low else f"in {low}..{high}"


POSITIVE, NON_NEGATIVE = Range(1), Range(0)
# Every int/float field of every table, by dataclass (SRConfig inherits StageConfig's): ``validate``
# fails loudly on a numeric field missing here, so a new setting cannot ship without a range.
RANGES: dict[type, dict[str, Range]] = {
    Config: {"seed": Range(0, 2**63 - 1)},  # what torch generators take; numpy refuses negative seeds
    IdentifierConfig: {"rank_min": NON_NEGATIVE, "rank_max": POSITIVE, "max_chars": POSITIVE},
    PriorConfig: {
        "weight": Range(0, open_low=True, hint=" (to train without class images, turn the prior off: --no-prior)"),
        "class_images": POSITIVE, "sample_steps": POSITIVE, "guidance": NON_NEGATIVE, "batch_size": POSITIVE,
    },
    StageConfig: {
        "steps": POSITIVE, "batch_size": POSITIVE, "lr": Range(0, 1, open_low=True), "lora_rank": POSITIVE,
        "gradient_accumulation": POSITIVE, "max_grad_norm": Range(0, hint=" (0: no clipping)"),
        "warmup_steps": NON_NEGATIVE, "checkpoint_every": NON_NEGATIVE, "keep_checkpoints": POSITIVE,
        "validation_every": NON_NEGATIVE, "max_bad_steps": POSITIVE,
    },
    SRConfig: {"noise_level": Range(0, 999)},  # IF's image-noising scheduler has 1000 levels
    RenderConfig: {"steps": POSITIVE, "guidance": NON_NEGATIVE, "sr_steps": POSITIVE, "sr_guidance": NON_NEGATIVE,
                   "num_images": POSITIVE},
}
CHOICES: dict[type, dict[str, tuple[str, ...]]] = {
    PriorConfig: {"sampler": ("ddpm", "dpm++")},
    StageConfig: {"mixed_precision": MIXED_PRECISION, "optimizer": OPTIMIZERS, "variance": ("learned", "fixed")},
    SRConfig: {"prompt": ("instance", "class")},
}


def range_of(cls: type, key: str) -> Range:
    """The range of numeric setting ``key`` of table ``cls``; KeyError if it has none (a bug, not bad input)."""
    for klass in cls.__mro__:
        if key in RANGES.get(klass, {}):
            return RANGES[klass][key]
    raise KeyError(f"{cls.__name__}.{key} has no range in cascade_booth.config.RANGES")


def choices_of(cls: type, key: str) -> tuple[str, ...] | None:
    return next((CHOICES[k][key] for k in cls.__mro__ if key in CHOICES.get(k, {})), None)


def _tables(cfg: Config) -> list[tuple[str, Any]]:
    return [("", cfg)] + [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                          if dataclasses.is_dataclass(getattr(cfg, f.name))]


def _unused(cfg: Config, section: str, key: str) -> bool:
    """Values that train nothing in this config, so no value of them is wrong (``--no-prior --class-images 0``)."""
    if section == "prior":
        return key != "enabled" and not cfg.prior.enabled
    return section in ("base", "sr") and key == "lora_rank" and getattr(cfg, section).full


Problem = tuple[str, str | None, str]  # (section, key or None for the whole table, text)


def _field_problems(cfg: Config) -> list[Problem]:
    problems: list[Problem] = []
    for section, table in _tables(cfg):
        hints = get_type_hints(type(table))
        for f in dataclasses.fields(table):
            value, typ = getattr(table, f.name), hints[f.name]
            if _unused(cfg, section, f.name):
                continue
            if typ in (int, float):
                text = range_of(type(table), f.name).problem(value)
            else:
                options = choices_of(type(table), f.name)
                text = None if options is None or value in options else f"must be one of {options}, got {value!r}"
            if text:
                problems.append((section, f.name, text))
    return problems


def _table_problems(cfg: Config) -> list[Problem]:
    """Checks that involve several values of one table."""
    from cascade_booth.optim import in_backward_problems  # imports torch: only when checking

    problems: list[Problem] = []
    for name in ("base", "sr"):
        # processes=1: the number of processes is the trainer's to check, for the stage that trains
        problems += [(name, None, p) for p in in_backward_problems(getattr(cfg, name), processes=1)]
    if cfg.identifier.rank_min >= cfg.identifier.rank_max:
        problems.append(("identifier", None, "needs rank_min < rank_max"))
    return problems


def _name(section: str, key: str | None, flags: dict[tuple[str, str], str]) -> str:
    """The flag the user typed for a value set by a flag, else its place in the TOML file."""
    if key is not None and (section, key) in flags:
        return flags[(section, key)]
    return " ".join(part for part in (f"[{section}]" if section else "", key or "") if part)


def validate(cfg: Config, where: str = "config") -> Config:
    """Range, choice and consistency checks that apply whatever the source of the values.

    A value set by a CLI flag (``override``) is named by the flag (``--steps must be >= 1``),
    any other by its TOML key after ``where`` (``tiny.toml: [base] steps must be >= 1``).
    """
    flags: dict[tuple[str, str], str] = getattr(cfg, "_flags", {})
    named, placed = [], []
    for section, key, text in _field_problems(cfg) + _table_problems(cfg):
        (named if (section, key) in flags else placed).append(f"{_name(section, key, flags)} {text}")
    if placed:
        named.append(f"{where}: " + "; ".join(placed))
    if named:
        raise InputError("; ".join(named))
    return cfg


def check_flags(values: dict[str, tuple[type, str, Any]]) -> None:
    """Range-check flags that stand for a setting without overriding it (``render --steps``).

    ``values`` maps each flag to (table class, key, value); a value of None was not given.
    """
    problems = [f"{flag} {text}" for flag, (cls, key, value) in values.items()
                if value is not None and (text := range_of(cls, key).problem(value))]
    if problems:
        raise InputError("; ".join(problems))


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
