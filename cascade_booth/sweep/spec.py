"""The sweep spec: a base config, a subject, fixed settings and a grid, all checked before any work.

A spec is a TOML file (``cascade-booth sweep --spec sweep.toml``)::

    config = "tiny"               # preset name or TOML file (relative paths: from the spec's folder)
    subject = "photos/clock"      # folder of 3-5 photos
    class_noun = "clock"
    prompts = "dreambench"        # or a file with one [V] prompt per line
    images_per_prompt = 4         # default: the config's render.num_images
    class_prompts = true          # also render each prompt without [V] (the PRES samples)

    [fixed]                       # config values for every point
    "base.steps" = 400

    [grid]                        # one axis per key; every combination is a point
    "base.lr" = [1e-6, 5e-6]
    "prior.enabled" = [true, false]
    class_noun = ["clock", "wall clock"]
    "sr.noise_level" = [50, 250]

Grid and fixed keys are config fields (``section.field``, or ``seed``) or ``class_noun``; nested
tables (``[grid.base] lr = [...]``) mean the same. CLI flags (``--grid KEY=V1,V2``, ``--set KEY=V``,
``--subject`` ...) override the file. Unknown keys (with a suggestion), wrong types, empty axes and
every point's config (:func:`cascade_booth.config_checks.validate`) are errors naming the culprit.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from cascade_booth.config import Config, load_config, override, suggest
from cascade_booth.errors import InputError
from cascade_booth.evaluation.paper import DEFAULT_CLIP, DEFAULT_DINO
from cascade_booth.paths import path_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CLASS_NOUN = "class_noun"
SR_PREFIX = "sr."
TOP_TYPES: dict[str, type] = {
    "config": str, "subject": str, "class_noun": str, "prompts": str, "images_per_prompt": int,
    "class_prompts": bool, "render_seed": int, "sr": bool, "dino_model": str, "clip_model": str,
    "device": str, "eval_batch_size": int, "fixed": dict, "grid": dict,
}
ALIASES = {
    "base.lr": "lr", "base.lora_rank": "rank", "base.steps": "steps", "prior.enabled": "prior",
    "prior.weight": "prior_weight", "sr.noise_level": "noise", "class_noun": "noun",
}
MAX_NAME = 100


@dataclass
class SweepSpec:
    """A validated sweep: the grid (axis key -> values, in order) and what every point shares."""

    subject: Path
    grid: dict[str, list[Any]]
    class_noun: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    prompts: str = "dreambench"
    images_per_prompt: int | None = None
    class_prompts: bool = True
    render_seed: int = 0
    sr: bool = False
    dino_model: str = DEFAULT_DINO
    clip_model: str = DEFAULT_CLIP
    device: str = "auto"
    eval_batch_size: int = 16

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Point:
    """One combination of the grid: its folder name, axis values, full config and class noun."""

    name: str
    settings: dict[str, Any]
    config: Config
    class_noun: str


def config_fields() -> dict[str, type]:
    """Every sweepable config field as ``section.field`` (or ``seed``) -> its type."""
    out: dict[str, type] = {}
    for name, typ in get_type_hints(Config).items():
        if dataclasses.is_dataclass(typ):
            out.update({f"{name}.{sub}": t for sub, t in get_type_hints(typ).items()})
        else:
            out[name] = typ
    return out


def field_type(key: str, where: str) -> type:
    """The type of a grid / fixed key, or an InputError naming the key (with a suggestion)."""
    if key == CLASS_NOUN:
        return str
    fields = config_fields()
    if key in fields:
        return fields[key]
    sections = {k.split(".")[0] for k in fields if "." in k}
    if key in sections:
        example = next(k for k in fields if k.startswith(f"{key}."))
        raise InputError(f"{where}: '{key}' is a config section: name one of its fields, e.g. '{example}'")
    raise InputError(f"{where}: unknown key '{key}'{suggest(key, [*fields, CLASS_NOUN])} "
                     "(keys are config fields such as 'base.lr', 'prior.enabled', 'sr.noise_level', or 'class_noun')")


def check_value(key: str, value: Any, typ: type, where: str) -> Any:
    """``value`` if it has the field's type (an int is a fine float), else an InputError."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: is_number, str: isinstance(value, str)}.get(typ, False)
    if not ok:
        hint = " (write true or false)" if typ is bool else ""
        raise InputError(f"{where} '{key}': {value!r} is not {'an' if typ is int else 'a'} {typ.__name__}{hint}")
    if typ is str and key == CLASS_NOUN and not value.strip():
        raise InputError(f"{where} '{key}': empty class noun")
    return float(value) if typ is float else value


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"base": {"lr": x}}`` -> ``{"base.lr": x}`` (dotted keys pass through)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _axes(table: dict[str, Any], where: str) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for key, values in flatten(table).items():
        typ = field_type(key, where)
        if not isinstance(values, list):
            raise InputError(f"{where} '{key}': expected a list of values, e.g. \"{key}\" = [{values!r}]")
        if not values:
            raise InputError(f"{where} '{key}': empty list (give at least one value)")
        checked = [check_value(key, value, typ, where) for value in values]
        if len(set(map(repr, checked))) != len(checked):
            raise InputError(f"{where} '{key}': a value is listed twice in {values!r}")
        axes[key] = checked
    if not axes:
        raise InputError(f"{where}: the grid is empty: add at least one axis, e.g. [grid] \"base.lr\" = [1e-6, 5e-6] "
                         "(or --grid base.lr=1e-6,5e-6)")
    return axes


def _scalar(data: dict[str, Any], key: str, where: str) -> Any:
    return check_value(key, data[key], TOP_TYPES[key], where) if key in data else None


def build_spec(data: dict[str, Any], where: str = "sweep spec") -> SweepSpec:
    """Check a spec dict (from :func:`load_spec` and CLI flags) and return a :class:`SweepSpec`."""
    for key in data:
        if key not in TOP_TYPES:
            raise InputError(f"{where}: unknown key '{key}'{suggest(key, list(TOP_TYPES))}")
    for key in ("fixed", "grid"):
        if not isinstance(data.get(key, {}), dict):
            raise InputError(f"{where}: '{key}' must be a table ([{key}])")
    grid = _axes(data.get("grid", {}), f"{where} [grid]")
    fixed = {key: check_value(key, value, field_type(key, f"{where} [fixed]"), f"{where} [fixed]")
             for key, value in flatten(data.get("fixed", {})).items()}
    if CLASS_NOUN in fixed:
        raise InputError(f"{where} [fixed]: put class_noun at the top level (class_noun = \"clock\")")
    if both := sorted(set(grid) & set(fixed)):
        raise InputError(f"{where}: '{both[0]}' is both in [fixed] and in [grid]: keep one")
    values = {key: _scalar(data, key, where) for key in TOP_TYPES if key not in ("fixed", "grid")}
    if not values["subject"] or not values["subject"].strip():
        raise InputError(f"{where}: 'subject' is needed (the folder of the subject's photos; --subject DIR)")
    if CLASS_NOUN not in grid and not (values[CLASS_NOUN] or "").strip():
        raise InputError(f"{where}: 'class_noun' is needed (e.g. class_noun = \"clock\"; --class-noun clock)")
    sr_axes = [k for k in grid if k.startswith(SR_PREFIX)]
    if values["sr"] is False and sr_axes:
        raise InputError(f"{where}: the grid sweeps '{sr_axes[0]}' but sr = false: stage two must train "
                         "for its settings to matter (drop sr = false / --no-sr)")
    for key in ("images_per_prompt", "eval_batch_size"):
        if values[key] is not None and values[key] < 1:
            raise InputError(f"{where}: '{key}' must be at least 1, got {values[key]}")
    if values["sr"] is None:  # stage two trains when a setting of it is given
        values["sr"] = any(k.startswith(SR_PREFIX) for k in [*grid, *fixed])
    values["subject"] = Path(values["subject"]).expanduser()
    values = {k: v for k, v in values.items() if v is not None}
    return SweepSpec(grid=grid, fixed=fixed, **values)


def load_spec(path: str | Path) -> dict[str, Any]:
    """Read a spec file; its relative ``subject``, ``prompts`` and ``config`` paths start at its folder."""
    path = Path(path)
    if problem := path_problem(path, "file"):
        raise InputError(f"sweep spec {path}: {problem}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"sweep spec {path}: not valid TOML: {err}") from None
    folder = path.resolve().parent
    for key in ("subject", "prompts", "config", "dino_model", "clip_model"):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip() or Path(value).expanduser().is_absolute():
            continue
        is_path = {"subject": True, "prompts": value.strip().lower() != "dreambench",
                   "config": value.endswith(".toml")}.get(key, (folder / value).is_dir())
        if is_path:
            data[key] = str(folder / value)
    return data


def axis_label(key: str) -> str:
    """Short axis name for folder names: ``base.lr`` -> ``lr``, ``sr.lr`` -> ``sr_lr``."""
    if key in ALIASES:
        return ALIASES[key]
    return key.removeprefix("base.").replace(".", "_")


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_hash(settings: dict[str, Any], length: int = 8) -> str:
    raw = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:length]


def point_name(settings: dict[str, Any]) -> str:
    """A readable, stable folder name: ``lr=1e-06_rank=4_prior=on`` (a hash is added when too long)."""
    raw = "_".join(f"{axis_label(k)}={format_value(v)}" for k, v in settings.items())
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", raw)
    return name if len(name) <= MAX_NAME else f"{name[:MAX_NAME]}~{settings_hash(settings)}"


def point_config(base: Config, values: dict[str, Any], where: str) -> Config:
    """``base`` with ``section.field`` values set, checked by :func:`cascade_booth.config_checks.validate`."""
    fields = {key: value for key, value in values.items() if key != CLASS_NOUN}
    return override(copy.deepcopy(base), fields, where=where)


def expand(spec: SweepSpec) -> list[Point]:
    """Every combination of the grid, in axis order, each with its validated config."""
    base = load_config(spec.config)
    points = []
    for values in itertools.product(*spec.grid.values()):
        settings = dict(zip(spec.grid, values, strict=True))
        name = point_name(settings)
        noun = str(settings.get(CLASS_NOUN, spec.class_noun)).strip()
        cfg = point_config(base, {**spec.fixed, **settings}, f"sweep point {name}")
        points.append(Point(name, settings, cfg, noun))
    names = [p.name for p in points]
    for point in points:  # distinct values that look alike in a folder name ("a b" / "a-b") get a hash
        if names.count(point.name) > 1:
            point.name = f"{point.name}~{settings_hash(point.settings)}"
    return points
