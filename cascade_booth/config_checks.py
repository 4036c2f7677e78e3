"""The sane values of every run setting, and ``validate``, which holds a config to them.

Kept apart from ``cascade_booth.config`` (the dataclasses, TOML loading and overrides) so that the
table of ranges and choices, and the checks built on it, read as one piece. This module sits below
``config`` and imports nothing of it (``config`` calls ``validate``): the tables are keyed by the
name of the dataclass they describe, and ``validate`` walks a config by its dataclass fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, get_type_hints

from cascade_booth.errors import InputError

MIXED_PRECISION = ("no", "fp16", "bf16", "auto")  # auto: devices.compute_precision
OPTIMIZERS = ("adamw", "adamw-in-backward")  # built by cascade_booth.optim.make_optimizer


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
# Every int/float field of every table, by the name of its dataclass in cascade_booth.config (SRConfig
# inherits StageConfig's): ``validate`` fails loudly on a numeric field missing here, so a new setting
# cannot ship without a range.
RANGES: dict[str, dict[str, Range]] = {
    "Config": {"seed": Range(0, 2**63 - 1)},  # what torch generators take; numpy refuses negative seeds
    "IdentifierConfig": {"rank_min": NON_NEGATIVE, "rank_max": POSITIVE, "max_chars": POSITIVE,
                         "offset_lr": Range(0, 1, hint=" (0: the paper's fixed identifier)")},
    "PriorConfig": {
        "weight": Range(0, open_low=True, hint=" (to train without class images, turn the prior off: --no-prior)"),
        "class_images": POSITIVE, "sample_steps": POSITIVE, "guidance": NON_NEGATIVE, "batch_size": POSITIVE,
    },
    "StageConfig": {
        "steps": POSITIVE, "batch_size": POSITIVE, "lr": Range(0, 1, open_low=True), "lora_rank": POSITIVE,
        "gradient_accumulation": POSITIVE, "max_grad_norm": Range(0, hint=" (0: no clipping)"),
        "x0_weight_cap": Range(1.0, hint=" (1: IF's plain epsilon loss)"),
        "offset_noise": Range(0, 1, hint=" (0: IF's plain noise)"),
        "warmup_steps": NON_NEGATIVE, "checkpoint_every": NON_NEGATIVE, "keep_checkpoints": POSITIVE,
        "validation_every": NON_NEGATIVE, "max_bad_steps": POSITIVE,
    },
    "SRConfig": {"noise_level": Range(0, 999),  # IF's image-noising scheduler has 1000 levels
                 "class_images": Range(0, hint=" (0: no class prior in stage two)"),
                 "class_block": Range(1, hint=" (1: the class pairs' full loss)"),
                 "crop": Range(0, hint=" (0: whole images)")},
    "RenderConfig": {"steps": POSITIVE, "guidance": NON_NEGATIVE, "sr_steps": POSITIVE,
                     "sr_guidance": NON_NEGATIVE, "num_images": POSITIVE, "sr_strength": Range(0, 1, open_low=True)},
}
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "PriorConfig": {"sampler": ("ddpm", "dpm++")},
    "StageConfig": {"mixed_precision": MIXED_PRECISION, "optimizer": OPTIMIZERS, "variance": ("learned", "fixed")},
    "SRConfig": {"prompt": ("instance", "class")},
    "RenderConfig": {"sr_start": ("noise", "input")},
}


def range_of(cls: type, key: str) -> Range:
    """The range of numeric setting ``key`` of table ``cls``; KeyError if it has none (a bug, not bad input)."""
    for klass in cls.__mro__:
        if key in RANGES.get(klass.__name__, {}):
            return RANGES[klass.__name__][key]
    raise KeyError(f"{cls.__name__}.{key} has no range in cascade_booth.config_checks.RANGES")


def choices_of(cls: type, key: str) -> tuple[str, ...] | None:
    return next((CHOICES[k.__name__][key] for k in cls.__mro__ if key in CHOICES.get(k.__name__, {})), None)


def _tables(cfg: Any) -> list[tuple[str, Any]]:
    return [("", cfg)] + [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                          if dataclasses.is_dataclass(getattr(cfg, f.name))]


def _unused(cfg: Any, section: str, key: str) -> bool:
    """Values that train nothing in this config, so no value of them is wrong (``--no-prior --class-images 0``)."""
    if section == "prior":
        return key != "enabled" and not cfg.prior.enabled
    return section in ("base", "sr") and key in ("lora_rank", "lora_text") and getattr(cfg, section).full


Problem = tuple[str, str | None, str]  # (section, key or None for the whole table, text)


def _field_problems(cfg: Any) -> list[Problem]:
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


def _table_problems(cfg: Any) -> list[Problem]:
    """Checks that involve several values of one table."""
    from cascade_booth.optim import in_backward_problems  # imports torch: only when checking

    problems: list[Problem] = []
    for name in ("base", "sr"):
        # processes=1: the number of processes is the trainer's to check, for the stage that trains
        problems += [(name, None, p) for p in in_backward_problems(getattr(cfg, name), processes=1)]
    if cfg.render.sr_strength < 1 and cfg.render.sr_start != "input":
        problems.append(("render", "sr_strength", "< 1 needs sr_start = \"input\" (pure noise has no strength)"))
    if cfg.identifier.rank_min >= cfg.identifier.rank_max:
        problems.append(("identifier", None, "needs rank_min < rank_max"))
    if cfg.prior.enabled:
        problems += [("prior", "contexts", text) for text in _context_problems(cfg.prior)]
    return problems


def _context_problems(prior: Any) -> list[str]:
    contexts = [c.strip() for c in prior.contexts]
    problems = ["has an empty context"] if "" in contexts else []
    if len(set(contexts)) < len(contexts):
        problems.append(f"repeats a context: {prior.contexts!r}")
    if 1 <= prior.class_images < len(contexts) + 1:  # below 1 the class_images range itself says so
        problems.append(f"needs class_images >= {len(contexts) + 1} (one per class prompt), got {prior.class_images}")
    return problems


def _name(section: str, key: str | None, flags: dict[tuple[str, str], str]) -> str:
    """The flag the user typed for a value set by a flag, else its place in the TOML file."""
    if key is not None and (section, key) in flags:
        return flags[(section, key)]
    return " ".join(part for part in (f"[{section}]" if section else "", key or "") if part)


def validate(cfg: Any, where: str = "config") -> Any:
    """Range, choice and consistency checks of a ``cascade_booth.config.Config``, whatever the source of the values.

    A value set by a CLI flag (``config.override``) is named by the flag (``--steps must be >= 1``),
    any other by its TOML key after ``where`` (``tiny.toml: [base] steps must be >= 1``). Returns ``cfg``.
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
