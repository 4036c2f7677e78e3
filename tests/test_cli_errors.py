"""Bad input: one clear message naming the culprit, non-zero exit, no traceback, no finished-looking run."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from cascade_booth.cli import main


def _run(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    return result.output


def _base(subject, run, *extra):
    return ["train-base", "--config", "tiny", "--subject", str(subject), "--class-noun", "clock",
            "--run", str(run), "--steps", "1", *extra]


def test_help_lists_every_command():
    out = CliRunner().invoke(main, ["--help"]).output
    for cmd in ("train-base", "train-sr", "render", "evaluate", "demo"):
        assert cmd in out


def test_missing_subject_folder(tmp_path: Path):
    out = _run(_base(tmp_path / "nope", tmp_path / "run"))
    assert "nope" in out
    assert not (tmp_path / "run" / "run.json").exists()


def test_bad_images_are_all_named(tmp_path: Path, clock_subject: Path):
    (clock_subject / "broken.jpg").write_text("not an image")
    (clock_subject / "empty.png").write_bytes(b"")
    out = _run(_base(clock_subject, tmp_path / "run"))
    assert "broken.jpg" in out and "empty.png" in out
    assert not (tmp_path / "run" / "run.json").exists()


def test_empty_class_noun(tmp_path: Path, clock_subject: Path):
    args = _base(clock_subject, tmp_path / "run")
    args[args.index("clock")] = " "
    assert "class-noun" in _run(args)


@pytest.mark.parametrize("identifier, why", [("zq xj", "white space"), ("ZQX", "not lower-case")])
def test_identifier_that_cannot_be_one_word(tmp_path: Path, clock_subject: Path, identifier: str, why: str):
    out = _run(_base(clock_subject, tmp_path / "run", "--identifier", identifier))
    assert identifier in out and why in out
    assert not (tmp_path / "run" / "run.json").exists()


def test_unknown_config_key(tmp_path: Path, clock_subject: Path):
    cfg = tmp_path / "my.toml"
    cfg.write_text("[base]\nlearning_rate = 1e-4\n")
    args = _base(clock_subject, tmp_path / "run")
    args[args.index("tiny")] = str(cfg)
    assert "learning_rate" in _run(args)


@pytest.mark.parametrize("model", ["nobody/no-such-model", "/definitely/not/here"])
def test_model_not_found_offline(tmp_path: Path, clock_subject: Path, model: str):
    out = _run(_base(clock_subject, tmp_path / "run", "--model", model))
    assert model in out
    assert not (tmp_path / "run" / "run.json").exists()


def test_evaluate_errors_are_clean_through_the_cli(tmp_path: Path):
    out = _run(["evaluate", "--generated", str(tmp_path / "missing"), "--subject", str(tmp_path)])
    assert "missing" in out


def test_pickled_model_weights_are_refused_by_default(tmp_path: Path, clock_subject: Path, tiny_paths):
    import shutil

    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled-model"
    shutil.copytree(tiny_paths["base"], model)
    unet_dir = model / "unet"
    weights = next(unet_dir.glob("*.safetensors"))
    torch.save(load_file(str(weights)), unet_dir / "diffusion_pytorch_model.bin")
    weights.unlink()
    out = _run(_base(clock_subject, tmp_path / "run", "--model", str(model), "--no-prior"))
    assert "diffusion_pytorch_model.bin" in out and "--allow-pickle" in out


@pytest.mark.parametrize(
    ("rank", "error", "expected"),
    [
        ("0", "input", "error: bad flag"),
        ("1", "input", ""),  # every process validated the same input: the main process says it
        ("1", "main", ""),  # the main process reports its own failure
        ("1", "run", "error (process 1): disk gone"),  # this process alone saw it
    ],
)
def test_launched_processes_report_an_error_once(monkeypatch, capsys, rank, error, expected):
    from cascade_booth.clikit import report_error
    from cascade_booth.errors import InputError, RunError
    from cascade_booth.parallel import MainProcessFailed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    err = {"input": InputError("bad flag"), "main": MainProcessFailed("stopped"), "run": RunError("disk gone")}[error]
    report_error(err)
    assert capsys.readouterr().err.strip() == expected
