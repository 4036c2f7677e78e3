"""Non-finite steps, config drift on resume, and concurrent processes (run-folder lock, class-image cache)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers_reliability import (  # noqa: F401 - env is a fixture
    SUBJECT,
    booth_env,
    class_image_folder,
    cli_args,
    config,
    copy_run,
    counting_sample,
    finish,
    fresh_cache,
    reference,
    reference_run,
    same,
    shared_dir,
    start_class_images,
    start_cli,
    train,
    wait_for,
    weights,
)
from PIL import Image
from safetensors.torch import load_file

from cascade_booth import checkpoint
from cascade_booth.config import StageConfig
from cascade_booth.errors import RunError, TrainingAborted
from cascade_booth.trainer import Callbacks
from stages import base as base_stage

# ---------------------------------------------------------------- non-finite steps


class _InfGrad(torch.autograd.Function):
    """Identity forward; every gradient through it becomes inf (an fp16 overflow, say)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def _patch_losses(monkeypatch, bad_calls, make_bad):
    """Wrap the stage-one job's losses: call number ``n`` in ``bad_calls`` goes through ``make_bad``."""
    jobs, calls = [], []
    real_train = base_stage.train

    def train_with_patch(job, cfg, root, seed, resume, cb):
        real_losses = job.losses

        def losses(unet, batch, generator):
            calls.append(1)
            out = real_losses(unet, batch, generator)
            return make_bad(out) if bad_calls(len(calls)) else out

        job.losses = losses
        jobs.append(job)
        return real_train(job, cfg, root, seed, resume, cb)

    monkeypatch.setattr(base_stage, "train", train_with_patch)
    return jobs


def _recorder(jobs):
    seen, events = {}, []

    def on_step(step, loss, lr):
        seen[step] = (loss, [p.detach().clone() for p in jobs[0].params])

    return seen, events, Callbacks(on_step=on_step, on_event=lambda step, message: events.append(message))


def _unchanged(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _all_saved_finite(run):
    for f in (run / "base").rglob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(f)).values() if t.is_floating_point()), f


def test_nan_loss_step_is_skipped(tmp_path, env, monkeypatch):
    jobs = _patch_losses(monkeypatch, lambda n: n in (2, 3), lambda out: out * math.nan)
    seen, events, cb = _recorder(jobs)
    train(tmp_path / "run", callbacks=cb)
    assert [math.isfinite(seen[s][0]) for s in (1, 2, 3, 4)] == [True, False, False, True]
    assert _unchanged(seen[1][1], seen[3][1])  # steps 2 and 3 applied nothing
    assert not _unchanged(seen[3][1], seen[4][1])
    assert "step 2: non-finite loss, update skipped" in events
    trainer_json = json.loads((tmp_path / "run/base/checkpoints/step-4/trainer.json").read_text())
    assert trainer_json["bad_steps"] == 2
    _all_saved_finite(tmp_path / "run")


def test_non_finite_gradients_are_skipped(tmp_path, env, monkeypatch):
    """Finite loss, inf gradients (what fp16 overflow gives without a grad scaler): not applied."""
    jobs = _patch_losses(monkeypatch, lambda n: n == 2, _InfGrad.apply)
    seen, events, cb = _recorder(jobs)
    train(tmp_path / "run", callbacks=cb)
    assert math.isfinite(seen[2][0])
    assert "step 2: non-finite gradients, update skipped" in events
    assert _unchanged(seen[1][1], seen[2][1])
    assert all(torch.isfinite(p).all() for p in seen[4][1])
    _all_saved_finite(tmp_path / "run")


def test_a_resume_and_a_skipped_step_reach_the_cli_and_the_event_log(tmp_path, env, monkeypatch):
    """The trainer's events are printed above the progress bar and kept in ``RUN/base/events.jsonl``.

    Control: the uninterrupted reference run the copy starts from logged its checkpoints and nothing else.
    """
    from click.testing import CliRunner

    from cascade_booth.cli import main

    run = copy_run(tmp_path / "run")
    before = [json.loads(line)["event"] for line in (run / "base" / "events.jsonl").read_text().splitlines()]
    assert [e.split(": ")[0] for e in before] == ["checkpoint", "checkpoint"]
    checkpoints = run / "base" / "checkpoints"
    shutil.rmtree(checkpoints / "step-4")  # resume from step 2
    _patch_losses(monkeypatch, lambda n: n == 1, lambda out: out * math.nan)  # step 3, the first one resumed
    result = CliRunner().invoke(main, cli_args(run, "--resume"))
    assert result.exit_code == 0, result.output
    expected = [(2, f"resume: continuing from step 2 ({checkpoints / 'step-2'})"),
                (3, "step 3: non-finite loss, update skipped"), (4, f"checkpoint: {checkpoints / 'step-4'}")]
    lines = [json.loads(line) for line in (run / "base" / "events.jsonl").read_text().splitlines()]
    assert [(line["step"], line["event"]) for line in lines[len(before):]] == expected
    for _, message in expected:
        assert result.output.count(message + "\n") == 1, result.output


def test_run_stops_after_max_bad_steps(tmp_path, env, monkeypatch):
    _patch_losses(monkeypatch, lambda n: n >= 2, lambda out: out * math.nan)
    with pytest.raises(TrainingAborted, match=r"non-finite on 2 steps; stopped at step 3 \(last checkpoint: step-2\)"):
        train(tmp_path / "run", config(max_bad_steps=2))
    _all_saved_finite(tmp_path / "run")


def test_huge_learning_rate_stops_and_saves_nothing_non_finite(tmp_path, env):
    """lr=1e30: step 1 moves the weights to ~1e30, after which the loss overflows on every step."""
    with pytest.raises(TrainingAborted, match="Lower the learning rate"):
        train(tmp_path / "run", config(lr=1e30, max_bad_steps=2, checkpoint_every=1))
    _all_saved_finite(tmp_path / "run")
    assert not (tmp_path / "run/base/pytorch_lora_weights.safetensors").exists()


@pytest.mark.parametrize("where", ["weight", "identifier_offset"])
def test_non_finite_weights_are_never_checkpointed(tmp_path, where):
    from cascade_booth.trainer import Extra

    class Job:
        name = "base"
        unet = torch.nn.Linear(2, 2)
        extras = {"identifier_offset": Extra(torch.nn.Parameter(torch.zeros(2)), 1e-2)}

    job = Job()
    optimizer = torch.optim.AdamW(job.unet.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with torch.no_grad():
        (job.unet.weight if where == "weight" else job.extras[where].param)[0] = math.inf
    with pytest.raises(checkpoint.NonFiniteWeights, match=rf"weights at step 3 hold non-finite values \('{where}'"):
        checkpoint.save(tmp_path, 3, job, optimizer, schedule, StageConfig(full=True))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- config drift on resume


def _drifted(tmp_path, what):
    cfg, extra = config(), {}
    if what == "seed":
        cfg.seed = 1
    elif what == "lr":
        cfg.base.lr = 2e-4
    elif what == "rank":
        cfg.base.lora_rank = 8
    elif what == "offset":
        cfg.identifier.offset_lr = 0.01
    else:
        extra["subject"] = shutil.copytree(SUBJECT, tmp_path / "subject")
        (extra["subject"] / "05.jpg").unlink()
    return cfg, extra


@pytest.mark.parametrize(
    "what, line",
    [("seed", "seed: 0 -> 1"), ("lr", "config.lr: 0.0001 -> 0.0002"), ("rank", "config.lora_rank: 4 -> 8"),
     ("subject", "subject_files.05.jpg: "), ("offset", "identifier_offset_lr: 0.0 -> 0.01")],
)
def test_resume_with_drift_is_refused_with_a_diff(tmp_path, env, what, line):
    run = copy_run(tmp_path / "run")
    cfg, extra = _drifted(tmp_path, what)
    with pytest.raises(RunError) as err:
        train(run, cfg, resume=True, **extra)
    assert "--resume with settings that differ from the run's" in str(err.value)
    assert line in str(err.value) and "--allow-drift" in str(err.value)


def test_allow_drift_resumes_with_the_new_learning_rate(tmp_path, env):
    run = copy_run(tmp_path / "run")
    shutil.rmtree(run / "base" / "checkpoints" / "step-4")
    cfg, _ = _drifted(tmp_path, "lr")
    lrs = []
    train(run, cfg, resume=True, allow_drift=True, callbacks=Callbacks(on_step=lambda s, loss, lr: lrs.append(lr)))
    assert lrs == [2e-4, 2e-4]
    assert not same(weights(run), reference())


def test_allow_drift_cannot_resume_a_different_rank(tmp_path, env):
    run = copy_run(tmp_path / "run")
    cfg, _ = _drifted(tmp_path, "rank")
    with pytest.raises(RunError, match=r"lora_rank or full fine-tuning changed.*even with --allow-drift"):
        train(run, cfg, resume=True, allow_drift=True)


def test_allow_drift_cannot_add_an_identifier_offset_to_a_run_without_one(tmp_path, env):
    run = copy_run(tmp_path / "run")
    cfg, _ = _drifted(tmp_path, "offset")
    with pytest.raises(RunError, match=r"holds no trained tensors outside the UNet, this run trains "
                                       r"\['identifier_offset'\]: identifier.offset_lr changed"):
        train(run, cfg, resume=True, allow_drift=True)


def test_drift_cli_message(tmp_path, env):
    from click.testing import CliRunner

    from cascade_booth.cli import main

    run = copy_run(tmp_path / "run")
    result = CliRunner().invoke(main, cli_args(run, "--resume", "--seed", "1"))
    assert result.exit_code == 2, result.output
    assert "seed: 0 -> 1" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- concurrent processes


def test_second_process_on_the_run_folder_is_refused(tmp_path, env):
    run, marker = tmp_path / "run", tmp_path / "paused"
    proc = start_cli(cli_args(run), "--pause", "step:1", str(marker))
    try:
        wait_for(marker, proc)
        for request in ({"resume": True}, {"force": True}):
            with pytest.raises(RunError, match=rf"another cascade-booth process \(pid {proc.pid}\) is using"):
                train(run, **request)
    finally:
        marker.with_name(marker.name + ".go").touch()
    code, out = finish(proc)
    assert code == 0, out
    assert same(weights(run), reference())  # --force did not touch the running process's files


def _fill_class_images_here(monkeypatch) -> list[str]:
    """Fill the current cache's class images in this process; returns the indices this process generated."""
    from cascade_booth import prior
    from cascade_booth.models import cache_dir, resolve_model
    from cascade_booth.text import TextEmbeddings

    made = []
    monkeypatch.setattr(prior, "_sample", counting_sample(prior._sample, made))
    cfg, model = config(), resolve_model("tiny", stage=1)
    prior.class_images(model, "a clock", cfg.prior, cfg.seed, cache_dir(), TextEmbeddings(model, cache_dir()))
    return made


def test_two_processes_fill_the_class_image_cache_once(tmp_path, monkeypatch):
    """A child and this process fill one fresh cache at the same moment: each image is made once."""
    reference()
    cache = fresh_cache(tmp_path / "cache")
    marker = tmp_path / "ready"
    proc = start_class_images(cache, marker)
    wait_for(marker, proc)
    marker.with_name(marker.name + ".go").touch()
    with booth_env(cache):
        here = _fill_class_images_here(monkeypatch)
    code, out = finish(proc)
    assert code == 0, out
    there = int(out.split("MADE ")[1].split()[0])
    assert sorted([len(here), there]) == [0, 2]  # the second waited for the lock, then found every image
    folder = class_image_folder(cache)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "00000.png", "00001.png", "cache.json"]
    assert json.loads((folder / "cache.json").read_text())["prompt"] == "a clock"
    warm = class_image_folder(shared_dir() / "cache")
    for name in ("00000.png", "00001.png"):
        assert np.array_equal(np.asarray(Image.open(folder / name)), np.asarray(Image.open(warm / name)))
