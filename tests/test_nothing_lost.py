"""Nothing lost: a refused or failed command leaves the user's files, the run and the trained weights intact.

Issue 15, rows 1-4 and 13: the demo removes only what a demo made; a render never overwrites an earlier
one; a refused command changes nothing on disk (run.json is written once training starts); a write
failure (simulated full disk) is one line naming the file and the space it needs, keeps the last good
checkpoint and keeps the trained weights for ``--resume``; a run in use says so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_reliability import (  # noqa: F401 - env is a fixture
    cli_args,
    config,
    copy_run,
    reference,
    reference_run,
    same,
    train,
    weights,
)
from safetensors import SafetensorError

from cascade_booth.cli import main
from cascade_booth.errors import BoothError, RunError
from cascade_booth.runfolder import RunFolder, checkpoint_steps
from cascade_booth.trainer import Callbacks

LORA = "pytorch_lora_weights.safetensors"
FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"  # what safetensors raises


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``; the lock file holds a pid and is left out."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if p.name != ".lock"}


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# ---------------------------------------------------------------- row 1: the demo's output folder


def _stub_demo_training(monkeypatch) -> None:
    """The demo's training and rendering as no-ops: these tests are about what it does to --out."""
    import stages
    from cascade_booth import runner
    from cascade_booth.world import demoreport, readback

    class Stage:
        @staticmethod
        def run(request, callbacks=None, progress=None):
            return None

    def score_run(run, subject, out, **kw):
        rates = {"images": 0, "dino": 0.0, "colour": 0.0, "pattern": 0.0, "context": 0.0, "class": 0.0}
        figures = {"instance": rates, "class": rates, "pretrained": rates, "colour_drift": 0.0, "size": 128,
                   "subject": {"class": "vase", "colour": "red", "pattern": "dots"}}
        return readback.Scored(figures, {"instance": [], "class": [], "pretrained": []})

    monkeypatch.setattr(stages, "get_stage", lambda name: Stage)
    monkeypatch.setattr(runner, "render_run", lambda request: [])
    monkeypatch.setattr(readback, "score_run", score_run)
    monkeypatch.setattr(demoreport, "write_report", lambda out, subject, scored: (out / "demo.png", out / "r.html"))


def _demo(out: Path):
    return CliRunner().invoke(main, ["demo", "--out", str(out)])


def test_demo_refuses_to_remove_a_folder_it_did_not_make(tmp_path, monkeypatch):
    _stub_demo_training(monkeypatch)
    mine = tmp_path / "out" / "run"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("keep")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "run").symlink_to(elsewhere)
    for out in (tmp_path / "out", tmp_path / "linked"):
        result = _demo(out)
        assert result.exit_code == 2, result.output
        assert "was not made by `cascade-booth demo`" in _one_line_error(result.output)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert (elsewhere / "notes.txt").read_text() == "keep"


def test_demo_replaces_what_an_earlier_demo_made(tmp_path, monkeypatch):
    from cascade_booth.demo import CLOCK

    _stub_demo_training(monkeypatch)
    out = tmp_path / "out"
    assert _demo(out).exit_code == 0
    (out / "run" / "left-by-the-demo.txt").write_text("x")
    result = _demo(out)
    assert result.exit_code == 0, result.output
    assert not (out / "run" / "left-by-the-demo.txt").exists()
    # a demo from before the marker existed: the bundled photos on the tiny cascade
    shutil.rmtree(out / "run")
    (out / "run").mkdir()
    (out / "run" / "run.json").write_text(json.dumps({"subject": str(CLOCK.resolve()),
                                                      "models": {"base": "tiny", "sr": "tiny"}}))
    assert _demo(out).exit_code == 0
    assert not (out / "run" / "run.json").exists()


# ---------------------------------------------------------------- row 2: renders are never overwritten


@pytest.fixture
def rendered_run(stage_one, tmp_path, one_thread) -> Path:
    return Path(shutil.copytree(stage_one, tmp_path / "run", ignore=shutil.ignore_patterns(".lock", "renders")))


def _render(run: Path, prompt: str, warnings: list[str], **kw) -> list[Path]:
    from cascade_booth.runner import RenderRequest, render_run

    return render_run(RenderRequest(run=run, prompts=[prompt], sr=False, steps=1, num_images=1, warn=warnings.append,
                                    **kw))


def test_a_second_render_keeps_the_first(rendered_run):
    warnings: list[str] = []
    first = _render(rendered_run, "a [V] clock", warnings)
    renders = rendered_run / "renders"
    assert [p.parent for p in first] == [renders] and not warnings
    before = _tree(renders)
    second = _render(rendered_run, "a [V] clock on the beach", warnings)
    assert {k: v for k, v in _tree(renders).items() if k in before} == before  # not one byte of the first changed
    assert second[0].parent.parent == renders and second[0].name == first[0].name
    assert len(warnings) == 1 and str(second[0].parent) in warnings[0]
    prompts = [json.loads(p.with_suffix(".json").read_text())["prompt"] for p in (first[0], second[0])]
    assert prompts[0].endswith(" clock") and prompts[1].endswith("on the beach")
    third = _render(rendered_run, "a [V] clock in the snow", warnings)
    assert len({p.parent for p in first + second + third}) == 3


def test_render_cli_says_where_a_second_render_went(rendered_run, tmp_path):
    out = tmp_path / "mine"
    args = ["render", "a [V] clock", "--run", str(rendered_run), "--no-sr", "--steps", "1", "--num-images", "2",
            "--out", str(out)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    before = _tree(out)
    second = CliRunner().invoke(main, args[:1] + ["a [V] clock in the snow"] + args[2:])
    assert second.exit_code == 0, second.output
    assert {k: v for k, v in _tree(out).items() if k in before} == before
    written = [Path(line) for line in second.output.splitlines() if line.endswith(".png")]
    assert written and all(p.parent.parent == out and p.is_file() for p in written), second.output
    assert f"this render is in {written[0].parent}" in second.output


def test_a_no_overwrite_write_never_replaces_a_file(tmp_path):
    from cascade_booth.runfolder import atomic_path

    target = tmp_path / "p000-seed0-00.png"
    target.write_text("an earlier render")
    with pytest.raises(BoothError, match="p000-seed0-00.png"):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_text("a new render")
    assert target.read_text() == "an earlier render"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# ---------------------------------------------------------------- row 3: a refused command changes nothing


def test_refused_resume_changes_nothing_on_disk(tmp_path, env):
    run = copy_run(tmp_path / "run")
    before = _tree(run)
    with pytest.raises(RunError, match="lora_rank or full fine-tuning changed"):
        train(run, config(lora_rank=8), resume=True, allow_drift=True)
    assert _tree(run) == before
    started = []
    train(run, resume=True, callbacks=Callbacks(on_start=lambda start, total: started.append(start)))
    assert started == [4] and same(weights(run), reference())  # not refused as drift: run.json is the run's


def _unet_refused(monkeypatch) -> None:
    """Loading the UNet fails (say its weights file is corrupt): a check after the run folder was opened."""
    from stages import base

    def refuse(*args, **kwargs):
        raise RunError("unet/diffusion_pytorch_model.safetensors: cannot be read")

    monkeypatch.setattr(base, "load_unet", refuse)


def test_refused_force_deletes_nothing(tmp_path, env, monkeypatch):
    run = copy_run(tmp_path / "run")
    before = _tree(run)
    _unet_refused(monkeypatch)
    with pytest.raises(RunError, match="cannot be read"):
        train(run, force=True)
    assert _tree(run) == before


def test_refused_stage_two_resume_changes_nothing(stage_one, tmp_path, one_thread):
    from stages import sr

    run = Path(shutil.copytree(stage_one, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))
    sr.run(sr.SRRequest(run=run, overrides=dict(steps=1, checkpoint_every=1)))
    before = _tree(run)
    drifted = sr.SRRequest(run=run, resume=True, allow_drift=True, overrides=dict(steps=1, lora_rank=8))
    with pytest.raises(RunError, match="lora_rank or full fine-tuning changed"):
        sr.run(drifted)
    assert _tree(run) == before


# ---------------------------------------------------------------- row 4: write failures lose nothing


def _full_disk_at_final_weights(monkeypatch, error: BaseException) -> None:
    from stages import common

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(common, "save_lora", fail)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), SafetensorError(FULL_DISK)],
                         ids=["OSError", "SafetensorError"])
def test_full_disk_at_the_final_weights_keeps_the_training(tmp_path, env, monkeypatch, error):
    run, cfg = tmp_path / "run", config(checkpoint_every=0)  # no checkpoint would hold the training
    _full_disk_at_final_weights(monkeypatch, error)
    with pytest.raises(BoothError) as err:
        train(run, cfg)
    message = str(err.value)
    assert "\n" not in message and f"{run / 'base' / LORA}: No space left on device" in message
    assert "it needs about" in message and "free now" in message and "--resume" in message
    assert not (run / "base" / LORA).exists() and not list((run / "base").glob(".final-*"))
    monkeypatch.undo()
    started = []
    train(run, cfg, resume=True, callbacks=Callbacks(on_start=lambda start, total: started.append(start)))
    assert started == [4]  # nothing trained again
    assert same(weights(run), reference())


def test_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmp_path, env, monkeypatch):
    from cascade_booth import checkpoint

    real = checkpoint.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if "/.step-4." in filename:
            raise SafetensorError(FULL_DISK)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(BoothError) as err:
        train(run)
    message = str(err.value)
    assert "\n" not in message and "No space left on device; the previous checkpoint step-2 is intact" in message
    assert "it needs about" in message
    assert sorted(p.name for p in (run / "base" / "checkpoints").iterdir()) == ["step-2"]
    monkeypatch.undo()
    train(run, resume=True)
    assert same(weights(run), reference())


def test_full_disk_cli_is_one_line(tmp_path, env, monkeypatch):
    _full_disk_at_final_weights(monkeypatch, SafetensorError(FULL_DISK))
    result = CliRunner().invoke(main, cli_args(tmp_path / "run", "--checkpoint-every", "0"))
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert LORA in line and "No space left on device" in line and "--resume" in line


def test_no_room_for_the_final_weights_is_refused_before_training(tmp_path, env, monkeypatch):
    from cascade_booth import diskspace

    monkeypatch.setattr(diskspace, "allocate", _enospc)
    run = tmp_path / "run"
    with pytest.raises(BoothError, match=r"not enough free space for the final weights.*it needs about"):
        train(run)
    assert not run.exists()


def _can_allocate(folder: Path) -> bool:
    from cascade_booth.diskspace import allocate

    probe = folder / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT)
    try:
        allocate(fd, 4096)
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
    return True


def test_the_final_weights_space_is_held_while_training(tmp_path, env):
    if not _can_allocate(tmp_path):
        pytest.skip("this filesystem cannot allocate ahead: only the free space is checked")
    run, held = tmp_path / "run", []
    train(run, callbacks=Callbacks(on_step=lambda step, loss, lr: held.append(
        sum(p.stat().st_blocks * 512 for p in run.glob(".reserved-*")))))
    assert min(held) >= (run / "base" / LORA).stat().st_size
    assert not list(run.glob(".reserved-*"))  # given back once the weights are written


def test_a_full_disk_never_leaves_half_a_loss_line(tmp_path, monkeypatch, capsys):
    from cascade_booth.losslog import LossLog

    log = LossLog(tmp_path)
    log.step(1, 0.5, 1e-4)
    before = log.path.read_bytes()
    real = os.write

    def half_then_full(fd, data):
        real(fd, data[: len(data) // 2])
        _enospc()

    monkeypatch.setattr(os, "write", half_then_full)
    log.step(2, 0.25, 1e-4)  # the log is no reason to stop training
    log.step(3, 0.125, 1e-4)
    monkeypatch.undo()
    assert log.path.read_bytes() == before
    assert capsys.readouterr().err.count("losses.jsonl: No space left on device") == 1
    log.step(4, 0.0625, 1e-4)  # room again: the waiting lines go out, in order
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_drops_a_loss_line_cut_short_by_a_crash(tmp_path, env):
    run = copy_run(tmp_path / "run")
    shutil.rmtree(run / "base" / "checkpoints" / "step-4")
    with (run / "base" / "losses.jsonl").open("a") as log:
        log.write('{"step": 5, "lo')  # a kill in the middle of a write
    train(run, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "base" / "losses.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_failed_write_is_one_line_naming_the_file(tmp_path):
    from cascade_booth.pngmeta import save_png

    class FullDisk:
        def save(self, *args, **kwargs):
            _enospc()

    with pytest.raises(BoothError) as err:
        save_png(FullDisk(), tmp_path / "p000-seed0-00.png", {"prompt": "a clock"})
    assert str(err.value).startswith(f"cannot write {tmp_path / 'p000-seed0-00.png'}: No space left on device")
    assert "free" in str(err.value) and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- row 13: left-over run.json, runs in use


def test_a_command_that_died_leaves_no_run_json(tmp_path, env, monkeypatch):
    run = tmp_path / "runs" / "clock"
    _unet_refused(monkeypatch)
    with pytest.raises(RunError, match="cannot be read"):
        train(run)
    assert not (tmp_path / "runs").exists()  # not even the folders the lock made
    monkeypatch.undo()
    train(run)
    assert same(weights(run), reference())


def test_a_run_json_left_without_training_is_started_over(tmp_path, env):
    """A train-base killed before its first checkpoint leaves run.json and nothing trained."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference_run() / "run.json", run / "run.json")
    meta = json.loads((run / "run.json").read_text())
    meta["stages"] = {}
    (run / "run.json").write_text(json.dumps(meta))
    ctx = train(run)
    assert any("stopped before saving anything" in w for w in ctx.warnings)
    assert same(weights(run), reference())


def test_train_sr_hint_is_a_command_that_works(tmp_path, env):
    from stages import sr

    run = copy_run(tmp_path / "run")
    (run / "base" / LORA).unlink()
    meta = json.loads((run / "run.json").read_text())
    meta["stages"] = {}  # killed after its checkpoints, before the final weights
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunError) as err:
        sr.run(sr.SRRequest(run=run))
    assert "--resume" in str(err.value) and f"--class-noun clock --run {run}" in str(err.value)
    assert "checkpoints up to step 4" in str(err.value)
    with pytest.raises(RunError, match="already holds a run with stage-one checkpoints up to step 4"):
        train(run)  # the plain command is refused, as the hint says


def test_a_run_in_use_says_so(tmp_path, env):
    run = copy_run(tmp_path / "run")
    (run / "sr" / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "sr" / "checkpoints" / "step-1" / "COMPLETE").write_text("1")
    holder = RunFolder(run)
    holder.lock()
    try:
        with pytest.raises(RunError, match=r"another cascade-booth process \(pid \d+\) is using this run"):
            train(run)  # it also holds a finished stage one: in use comes first
        from stages import sr

        with pytest.raises(RunError, match=r"another cascade-booth process \(pid \d+\) is using this run"):
            sr.run(sr.SRRequest(run=run))
    finally:
        holder.unlock()
    assert checkpoint_steps(run / "sr" / "checkpoints") == [1]
