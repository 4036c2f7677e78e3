"""Issue 15, rows 11 and 14-17: numeric ranges, visible defaults, resume rules, naming the culprit, packaging."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import get_type_hints

import click
import pytest
from click.testing import CliRunner

from cascade_booth.cli import main
from cascade_booth.config import Config, apply_overrides, load_config
from cascade_booth.config_checks import validate
from cascade_booth.errors import InputError, RunError

REPO = Path(__file__).resolve().parents[1]


def _cli(args, ok: bool = False) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit | type(None)), result.output
    return result.output


def _base(subject, run, *extra) -> list:
    return ["train-base", "--config", "tiny", "--subject", subject, "--class-noun", "clock", "--run", run, *extra]


def _numeric_fields():
    """(section, key, type) of every int/float setting of every config table ("" = top level)."""
    out = []
    for name, typ in [("", Config), *((f.name, get_type_hints(Config)[f.name]) for f in dataclasses.fields(Config)
                                      if dataclasses.is_dataclass(get_type_hints(Config)[f.name]))]:
        hints = get_type_hints(typ)
        out += [(name, f.name, hints[f.name]) for f in dataclasses.fields(typ) if hints[f.name] in (int, float)]
    return out


# ---------------------------------------------------------------- row 11: every numeric setting has a range


@pytest.mark.parametrize("section, key, typ", _numeric_fields(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_numeric_setting_refuses_negative_and_non_finite_values(section, key, typ):
    bad = [-1, -3] if typ is int else [-1.0, -3.0, math.nan, math.inf]
    for value in bad:
        cfg = load_config("tiny")
        setattr(getattr(cfg, section) if section else cfg, key, value)
        with pytest.raises(InputError, match=re.escape(key)):
            validate(cfg, "test")


@pytest.mark.parametrize("flag, value", [("--prior-weight", "-1"), ("--max-grad-norm", "-3"), ("--prior-weight", "0")])
def test_reported_flags_are_refused(tmp_path, flag, value):
    out = _cli(_base(tmp_path / "photos", tmp_path / "run", flag, value))
    assert flag in out and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- row 16a: flag errors name the flag


def _numeric_options(cmd: click.Command) -> list[str]:
    return [p.opts[0] for p in cmd.params if isinstance(p, click.Option)
            and isinstance(p.type, click.types.IntParamType | click.types.FloatParamType)]


def _fake_run(folder: Path) -> Path:
    """Enough of a run folder for train-sr to reach its config check."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"stages": {"base": {"done": True}}, "config": Config().to_dict(), "models": {"base": "tiny", "sr": "tiny"}}
    (folder / "run.json").write_text(json.dumps(meta))
    return folder


def _command_args(name: str, tmp_path: Path) -> list:
    if name == "train-base":
        return _base(tmp_path / "photos", tmp_path / "run")
    if name == "train-sr":
        return ["train-sr", "--run", _fake_run(tmp_path / "run")]
    return ["render", "a [V] clock", "--run", tmp_path / "run"]


@pytest.mark.parametrize("name", ["train-base", "train-sr", "render"])
def test_every_numeric_flag_is_range_checked_and_named(tmp_path, name):
    cmd = main.commands[name]
    options = _numeric_options(cmd)
    assert options
    for option in options:
        is_float = next(p for p in cmd.params if p.opts[0] == option).type.name == "float"
        for value in ["-1", "nan"] if is_float else ["-1"]:
            out = _cli([*_command_args(name, tmp_path), option, value])
            assert f"{option} must be" in out, (option, value, out)
            assert "[base]" not in out and "[sr]" not in out and "[prior]" not in out, out


def test_a_file_value_is_named_by_its_toml_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "configs" / "tiny.toml").read_text().replace("steps = 6", "steps = 0"))
    with pytest.raises(InputError, match=r"bad.toml: \[base\] steps must be >= 1"):
        load_config(str(bad))
    cfg = load_config("tiny")
    with pytest.raises(InputError) as err:
        apply_overrides(cfg, "base", steps=0)
    assert str(err.value).startswith("--steps must be >= 1")


# ---------------------------------------------------------------- row 14: the default config is visible


def test_help_states_the_default_config():
    out = CliRunner().invoke(main, ["train-base", "--help"]).output
    flat = " ".join(out.split())
    assert "default" in flat.lower() and "IF-I-XL" in flat and "tiny" in flat
    sr_help = " ".join(CliRunner().invoke(main, ["train-sr", "--help"]).output.split())
    assert "the run's" in sr_help


def test_offline_missing_model_suggests_the_offline_presets(tmp_path, clock_subject):
    from cascade_booth.config import offline_presets

    assert "tiny" in offline_presets()
    out = _cli(["train-base", "--subject", clock_subject, "--class-noun", "clock", "--run", tmp_path / "run",
                "--steps", "1"])
    flat = " ".join(out.split())
    assert "IF-I-XL" in flat and "huggingface-cli download" in flat
    for preset in offline_presets():
        assert f"--config {preset}" in flat, flat
    if (REPO / "configs" / "world.toml").is_file():
        assert "--config world" in flat


# ---------------------------------------------------------------- row 15: irrelevant values, raising steps


def test_prior_values_do_not_matter_without_the_prior():
    cfg = load_config("tiny")
    apply_overrides(cfg, "prior", enabled=False, class_images=0, weight=-1.0, batch_size=0)
    with pytest.raises(InputError, match="--class-images"):
        apply_overrides(cfg, "prior", enabled=True)
    cfg = load_config("tiny")
    apply_overrides(cfg, "base", full=True, lora_rank=0)  # a full fine-tune has no LoRA rank


def test_no_prior_with_zero_class_images_trains(tmp_path, clock_subject, one_thread):
    _cli(_base(clock_subject, tmp_path / "run", "--steps", "1", "--no-prior", "--class-images", "0",
               "--checkpoint-every", "0"), ok=True)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["base"]["done"]


def test_resume_drift_ignores_prior_settings_when_the_prior_is_off():
    from cascade_booth.session import check_resume

    def meta(**prior):
        cfg = Config().to_dict()
        cfg["prior"].update(prior)
        return {"seed": 0, "config": cfg}

    check_resume(meta(enabled=False, class_images=8), meta(enabled=False, class_images=50), "base", False)
    with pytest.raises(RunError, match="class_images"):
        check_resume(meta(enabled=True, class_images=8), meta(enabled=True, class_images=50), "base", False)


def test_stage_two_resume_checks_the_prior_weight_only_when_its_class_prior_is_on():
    from cascade_booth.drift import stage_settings
    from cascade_booth.session import check_resume

    def record(class_images: int, weight: float) -> dict:
        return stage_settings({"seed": 0, "config": {**Config().to_dict()["sr"], "class_images": class_images},
                               "prior_weight": weight}, "sr")

    check_resume(record(0, 1.0), record(0, 2.0), "sr", False)
    check_resume(record(4, 1.0), record(4, 1.0), "sr", False)
    with pytest.raises(RunError, match="prior_weight: 1.0 -> 2.0"):
        check_resume(record(4, 1.0), record(4, 2.0), "sr", False)
    check_resume(stage_settings({"seed": 0, "config": {**Config().to_dict()["sr"], "class_images": 4}}, "sr"),
                 record(4, 1.0), "sr", False)  # a record from before the weight was kept: the default weight


def _lora(run: Path):
    from safetensors.torch import load_file

    return load_file(run / "base" / "pytorch_lora_weights.safetensors")


def test_resume_may_raise_steps_and_equals_the_longer_run(tmp_path, clock_subject, one_thread):
    common = ["--class-images", "2", "--checkpoint-every", "2"]
    _cli(_base(clock_subject, tmp_path / "a", "--steps", "4", *common), ok=True)
    out = _cli(_base(clock_subject, tmp_path / "a", "--steps", "6", "--resume", *common), ok=True)
    assert "stage one done" in out
    meta = json.loads((tmp_path / "a" / "run.json").read_text())
    assert meta["stages"]["base"]["steps"] == 6 and meta["config"]["base"]["steps"] == 6
    losses = [json.loads(line)["step"] for line in (tmp_path / "a" / "base" / "losses.jsonl").read_text().splitlines()]
    assert losses == [1, 2, 3, 4, 5, 6]
    _cli(_base(clock_subject, tmp_path / "b", "--steps", "6", *common), ok=True)
    resumed, straight = _lora(tmp_path / "a"), _lora(tmp_path / "b")
    assert resumed.keys() == straight.keys()
    assert all(resumed[k].equal(straight[k]) for k in resumed)  # the schedule does not depend on the total
    # Fewer steps than the run already trained cannot be honoured: refused, even with --allow-drift.
    for extra in ([], ["--allow-drift"]):
        out = _cli(_base(clock_subject, tmp_path / "a", "--steps", "3", "--resume", *common, *extra))
        assert "--steps" in out and "6" in out


# ---------------------------------------------------------------- row 16b: symlink loops are not "not found"


def _loop(tmp_path: Path, name: str = "loop") -> Path:
    link = tmp_path / name
    link.symlink_to(link.name)
    return link


def test_subject_folder_symlink_loop_is_named(tmp_path):
    out = _cli(_base(_loop(tmp_path), tmp_path / "run", "--steps", "1"))
    assert "symlink loop" in out and "not found" not in out


def _path_readers():
    from cascade_booth.evaluation.benchmark import load_dreambench
    from cascade_booth.evaluation.inputs import discover_generated, discover_run, list_subject_images
    from cascade_booth.evaluation.prompts import load_prompts_file
    from cascade_booth.images import load_subject_images
    from cascade_booth.sweep.spec import load_spec

    return {
        "subject photos": lambda p: load_subject_images(p, 64), "config": lambda p: load_config(str(p)),
        "dreambench": load_dreambench, "generated": discover_generated, "run": discover_run,
        "eval subject": list_subject_images, "prompts": lambda p: load_prompts_file(p, "clock"), "spec": load_spec,
    }


@pytest.mark.parametrize("reader", sorted(_path_readers()))
def test_every_user_path_tells_a_loop_and_a_broken_link_from_a_missing_path(tmp_path, reader):
    read = _path_readers()[reader]
    with pytest.raises(InputError, match="symlink loop"):
        read(_loop(tmp_path, "loop.toml"))
    broken = tmp_path / "broken.toml"
    broken.symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match="broken symlink"):
        read(broken)
    with pytest.raises(InputError, match="not found"):
        read(tmp_path / "absent.toml")


# ---------------------------------------------------------------- row 16c: progress bars print their end once


def test_class_image_bar_prints_its_end_once_with_a_sane_rate(capsys):
    from cascade_booth.clikit import class_progress

    update = class_progress()
    update(1, 3)  # generation starts with one image already cached
    time.sleep(0.2)
    update(2, 3)
    time.sleep(0.2)
    update(3, 3)
    err = capsys.readouterr().err
    assert err.count("3/3") == 1, err
    rates = [float(r) for r in re.findall(r"([\d.]+)img/s", err)]
    assert rates and max(rates) < 20, err  # 2 new images in 0.4 s, not 10^5 img/s


def test_class_image_generation_reports_its_start(tmp_path, tiny_paths, one_thread):
    from cascade_booth.prior import class_images
    from cascade_booth.text import TextEmbeddings

    cfg = load_config("tiny").prior
    cfg.class_images, cfg.batch_size = 2, 1
    calls = []
    folder = tmp_path / "cache"

    def progress(done, total):
        calls.append((done, total, len(list(folder.rglob("*.png")))))

    texts = TextEmbeddings(tiny_paths["base"], tmp_path / "text")
    class_images(tiny_paths["base"], "a clock", cfg, 0, folder, texts, "cpu", progress)
    assert calls[0] == (0, 2, 0) and calls[-1][:2] == (2, 2)  # the bar starts before the first image


def test_training_bar_prints_its_end_once(capsys):
    from cascade_booth.clikit import TqdmCallbacks

    bar = TqdmCallbacks("stage one")
    bar.start(0, 2)
    bar.step(1, 0.5, 1e-4)
    time.sleep(0.15)
    bar.step(2, 0.4, 1e-4)
    bar.close()
    err = capsys.readouterr().err
    assert err.count("2/2") == 1, err


# ---------------------------------------------------------------- row 17: a wheel carries every shipped file


def _shipped_files() -> list[str]:
    """Every non-Python file of the packages (presets, accelerate configs, data, world weights)."""
    out = []
    for top in ("cascade_booth", "stages", "configs"):
        for path in (REPO / top).rglob("*"):
            rel = path.relative_to(REPO)
            if path.is_file() and "__pycache__" not in rel.parts and not any(p.startswith(".") for p in rel.parts):
                out.append(rel.as_posix())
    return sorted(out)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the source tree (building in place would write build/ into the repo)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for top in ("cascade_booth", "stages", "configs"):
        shutil.copytree(REPO / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], cwd=src, check=True, capture_output=True, timeout=120)
    (found,) = (tmp / "dist").glob("cascade_booth-*.whl")
    return found


def test_wheel_holds_every_shipped_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = _shipped_files()
    assert "configs/tiny.toml" in shipped and "configs/accelerate/ddp.yaml" in shipped
    assert [f for f in shipped if f not in names] == []


def test_presets_load_from_an_install_outside_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=120)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cascade_booth, cascade_booth.config as c\n"
        "assert cascade_booth.__file__.startswith(sys.argv[1]), cascade_booth.__file__\n"
        "print(c.resolve_config_path('tiny')); print(c.load_config('tiny').model.base)\n"
        "print(sorted(p.name for p in (c.CONFIG_DIR / 'accelerate').iterdir()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[1] == "tiny"
    assert "ddp.yaml" in lines[2]


def test_tools_scripts_import_their_siblings_by_name():
    """``python tools/X.py`` puts tools/ on sys.path, not the repository root: ``from tools.y import ...`` fails
    there (it did, inside a function of bench_fixtures, until 2026-12-07), ``from y import ...`` works."""
    import ast

    culprits = []
    for script in sorted((REPO / "tools").rglob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            culprits += [f"{script.name}:{node.lineno} {n}" for n in names if n == "tools" or n.startswith("tools.")]
    assert culprits == []
