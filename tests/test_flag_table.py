"""The training commands' config flags come from one table (cascade_booth.flags) and land on their fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from cascade_booth.cli import main
from cascade_booth.commands import stage_config
from cascade_booth.config import Config, load_config
from cascade_booth.config_checks import choices_of, range_of
from cascade_booth.errors import InputError
from cascade_booth.flags import TABLE, flags_of

NOT_CONFIG = {"subject", "class_noun", "run_dir", "config", "resume", "allow_drift", "allow_pickle", "identifier",
              "force", "help"}
COMMANDS = {"base": "train-base", "sr": "train-sr"}


def _get(cfg: Config, dotted: str) -> Any:
    section, _, key = dotted.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, key)


def _other_value(cfg: Config, dotted: str) -> list[str]:
    """Command-line words for a valid value of ``dotted`` that differs from ``cfg``'s."""
    value = _get(cfg, dotted)
    section, _, key = dotted.rpartition(".")
    if isinstance(value, bool):
        return []  # a switch: its name is the value
    if isinstance(value, int):
        return [str(value + 1)]
    if isinstance(value, float):  # half, unless that is out of range (a cap whose least value is the default); 0: 0.5
        valid = range_of(type(getattr(cfg, section)), key)
        return [str(next(v for v in (value / 2, value * 2, 0.5) if v != value and valid.problem(v) is None))]
    options = choices_of(type(getattr(cfg, section)), key) if section else None
    return [next(o for o in options if o != value)] if options else ["some/model"]


@pytest.mark.parametrize("stage", ["base", "sr"])
def test_every_config_flag_comes_from_the_table(stage):
    cmd = main.commands[COMMANDS[stage]]
    options = {p.name for p in cmd.params if isinstance(p, click.Option)} - NOT_CONFIG
    assert options == {flag.param for flag in flags_of(stage)}
    for flag in flags_of(stage):  # and every target is a real config field
        for target in flag.targets(stage):
            _get(Config(), target)


@pytest.mark.parametrize("flag", [(stage, f) for f in TABLE for stage in f.stages],
                         ids=lambda v: f"{v[0]}:{v[1].decl}")
def test_a_flag_round_trips_to_its_fields(flag, tmp_path: Path):
    stage, flag = flag
    cfg = load_config("tiny")
    target = flag.targets(stage)[0]
    if target.endswith(".optimizer"):  # adamw-in-backward needs no clipping (it never holds all gradients)
        getattr(cfg, stage).max_grad_norm = 0.0
    words = _other_value(cfg, target)
    on, _, off = flag.decl.partition("/")
    args = [flag.decl, *words] if words else [off if _get(cfg, target) else on]
    required = ["--subject", str(tmp_path), "--class-noun", "clock"] if stage == "base" else []
    ctx = main.commands[COMMANDS[stage]].make_context(COMMANDS[stage], [*required, "--run", str(tmp_path), *args])
    changed = stage_config(cfg, stage, ctx.params)
    for field in flag.targets(stage):
        assert _get(changed, field) != _get(load_config("tiny"), field), field
        assert _get(changed, field) == _get(changed, target)
    assert set(changed._flags) == {tuple(t.rpartition(".")[::2]) for t in flag.targets(stage)}


def test_a_bad_flag_value_is_named_by_its_flag(tmp_path: Path):
    ctx = main.commands["train-base"].make_context("train-base", ["--subject", str(tmp_path), "--class-noun", "clock",
                                                                  "--run", str(tmp_path), "--prior-weight", "-1"])
    with pytest.raises(InputError, match="^--prior-weight must be"):
        stage_config(load_config("tiny"), "base", ctx.params)
