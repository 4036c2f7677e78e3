"""Resume parity: a stage-one run stopped by SIGINT, SIGTERM or SIGKILL (during training or during
class-image generation) and resumed with ``--resume`` ends with weights bitwise equal to an
uninterrupted run of the same seed; ``--resume`` on a finished run or a run without checkpoints.

The interrupted runs are the real CLI in a child process (see ``helpers_reliability``), paused at a
known step so the signal arrives at a known point; the resumes run in this process.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from helpers_reliability import (  # noqa: F401 - env is a fixture
    booth_env,
    class_image_folder,
    cli_args,
    config,
    copy_run,
    finish,
    fresh_cache,
    reference,
    reference_run,
    same,
    signal_at_pause,
    start_cli,
    train,
    wait_for,
    weights,
)

from cascade_booth.errors import TrainingAborted
from cascade_booth.runfolder import checkpoint_steps
from cascade_booth.trainer import Callbacks


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint_and_resume_is_bitwise_equal(tmp_path, env, sig):
    expected = reference()
    run, marker = tmp_path / "run", tmp_path / "paused"
    code, out = signal_at_pause(start_cli(cli_args(run), "--pause", "step:3", str(marker)), marker, sig)
    assert code == 3, out
    assert f"{sig.name} received; checkpoint saved at step 3. Run again with --resume." in out
    assert "Traceback" not in out
    assert checkpoint_steps(run / "base" / "checkpoints") == [2, 3]
    assert not (run / "base" / "pytorch_lora_weights.safetensors").exists()
    started = []
    train(run, resume=True, callbacks=Callbacks(on_start=lambda start, total: started.append(start)))
    assert started == [3]
    assert same(weights(run), expected)


def test_sigkill_resumes_from_last_periodic_checkpoint(tmp_path, env):
    expected = reference()
    run, marker = tmp_path / "run", tmp_path / "paused"
    proc = start_cli(cli_args(run), "--pause", "step:3", str(marker))
    wait_for(marker, proc)
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL
    assert checkpoint_steps(run / "base" / "checkpoints") == [2]
    started = []
    train(run, resume=True, callbacks=Callbacks(on_start=lambda start, total: started.append(start)))
    assert started == [2]
    assert same(weights(run), expected)


def test_sigterm_during_class_images_then_resume_is_bitwise_equal(tmp_path):
    """Stopped after the first of two class images: a clean message, the image kept, and the resumed
    run (which generates the second image, then trains from step 0) matches the reference."""
    expected = reference()
    cache = fresh_cache(tmp_path / "cache")
    run, marker = tmp_path / "run", tmp_path / "paused"
    proc = start_cli(cli_args(run), "--pause", "image:1", str(marker), cache=cache)
    code, out = signal_at_pause(proc, marker, signal.SIGTERM)
    assert code == 3, out
    assert "SIGTERM received while generating class images (1 of 2 cached, kept)" in out
    assert "--resume" in out and "Traceback" not in out
    folder = class_image_folder(cache)
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png"]
    assert not list(folder.glob(".*.tmp"))
    with booth_env(cache):
        train(run, resume=True)
    assert same(weights(run), expected)


class _Escaped(Exception):
    pass


def _escape(signum, frame):
    raise _Escaped


def test_sigint_during_class_images_stops_cleanly(tmp_path, monkeypatch):
    """In this process: SIGINT after the first image raises TrainingAborted, not KeyboardInterrupt
    (a handler of the test's own turns an unhandled SIGINT into _Escaped)."""
    from cascade_booth import prior

    reference()
    cache = fresh_cache(tmp_path / "cache")
    save = prior._save_png

    def save_then_interrupt(image, path):
        save(image, path)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(prior, "_save_png", save_then_interrupt)
    old = signal.signal(signal.SIGINT, _escape)
    try:
        with booth_env(cache), pytest.raises(TrainingAborted, match=r"SIGINT received while generating class"):
            train(tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, old)
    assert sorted(p.name for p in class_image_folder(cache).glob("*.png")) == ["00000.png"]


def test_resume_on_finished_run_trains_nothing(tmp_path, env):
    run = copy_run(tmp_path / "run")
    before = weights(run)
    ckpts = sorted(p.name for p in (run / "base" / "checkpoints").iterdir())
    events = []
    cb = Callbacks(on_step=lambda *a: pytest.fail("a finished run trained again"),
                   on_event=lambda step, message: events.append(message))
    train(run, resume=True, callbacks=cb)
    assert any("nothing to do" in e for e in events)
    assert sorted(p.name for p in (run / "base" / "checkpoints").iterdir()) == ckpts
    assert same(weights(run), before)


def test_resume_without_checkpoint_starts_at_step_zero(tmp_path, env):
    expected = reference()
    # No run folder at all: --resume starts a new run.
    train(tmp_path / "new", resume=True)
    assert same(weights(tmp_path / "new"), expected)
    # A run whose checkpoints are gone (e.g. killed before the first one): trains from step 0.
    run = copy_run(tmp_path / "run")
    shutil.rmtree(run / "base")
    events = []
    train(run, resume=True, callbacks=Callbacks(on_event=lambda step, message: events.append((step, message))))
    assert (0, "resume: no complete checkpoint, starting at step 0") in events
    assert same(weights(run), expected)


def test_last_step_is_always_checkpointed(tmp_path, env):
    """steps=3 with checkpoint_every=2 still ends with a checkpoint at step 3, so --resume of the
    finished run is a no-op instead of retraining step 3."""
    train(tmp_path / "run", config(steps=3))
    assert checkpoint_steps(tmp_path / "run" / "base" / "checkpoints") == [2, 3]


def test_second_signal_stops_at_once():
    """The first SIGINT only sets the flag (the step finishes and a checkpoint is saved); a second one
    raises KeyboardInterrupt so an impatient user is not stuck behind a slow checkpoint write."""
    from cascade_booth.trainer import _Interrupt

    before = signal.getsignal(signal.SIGTERM)
    with _Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == before
