"""Atomic checkpoints and write errors.

A crash at any file of a checkpoint write (simulated by snapshotting the checkpoint folder from
``checkpoint.WRITE_HOOK``, and once by a real SIGKILL) leaves the previous checkpoint complete and
intact; ``--resume`` skips the half-written one. A full disk gives a clear ``BoothError``.
"""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import signal

import pytest
from helpers_reliability import (  # noqa: F401 - env is a fixture
    booth_env,
    cli_args,
    config,
    copy_run,
    finish,
    fresh_cache,
    reference,
    reference_run,
    same,
    start_cli,
    train,
    weights,
)

from cascade_booth import checkpoint, prior
from cascade_booth.errors import BoothError, RunError
from cascade_booth.runfolder import COMPLETE, checkpoint_steps, new_checkpoint

POINTS = ["weights.safetensors", "optimizer.safetensors", "trainer.json", COMPLETE, "step-4"]


def _in_step(path, step: int) -> bool:
    return path.name == f"step-{step}" or path.parent.name.startswith(f".step-{step}.")


def _same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    return not (cmp.left_only or cmp.right_only or filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1])


def _resume_from(snapshot, run, dest):
    """A copy of ``run`` whose checkpoints are ``snapshot``, resumed."""
    (dest / "base").mkdir(parents=True)
    shutil.copy(run / "run.json", dest / "run.json")
    shutil.copytree(snapshot, dest / "base" / "checkpoints")
    train(dest, config(keep_checkpoints=1), resume=True)
    assert not [p for p in (dest / "base" / "checkpoints").iterdir() if p.name.startswith(".")]
    return weights(dest)


def test_crash_at_every_checkpoint_file_keeps_a_complete_checkpoint(tmp_path, env, monkeypatch):
    """Snapshot the checkpoint folder at each file of the step-4 write: what a kill there leaves.
    With keep_checkpoints=1, step-2 must survive until step-4 is complete and renamed."""
    run, root = tmp_path / "run", tmp_path / "run" / "base" / "checkpoints"
    snaps, step2 = [], tmp_path / "step-2"

    def hook(path):
        if path.name == "step-2":
            shutil.copytree(path, step2)
        if _in_step(path, 4):
            snaps.append((path.name, shutil.copytree(root, tmp_path / f"snap-{len(snaps)}")))

    monkeypatch.setattr(checkpoint, "WRITE_HOOK", hook)
    train(run, config(keep_checkpoints=1))
    monkeypatch.setattr(checkpoint, "WRITE_HOOK", None)
    assert [name for name, _ in snaps] == POINTS
    for name, snap in snaps:
        steps = checkpoint_steps(snap)
        assert steps == ([2, 4] if name == "step-4" else [2]), name
        assert _same_tree(snap / "step-2", step2), name
    assert checkpoint_steps(root) == [4]  # pruned only afterwards
    expected = reference()
    # Resume from a crash before the marker (a half-written .step-4.* folder is left) and after the rename.
    assert same(_resume_from(snaps[2][1], run, tmp_path / "resumed-2"), expected)
    assert same(_resume_from(snaps[4][1], run, tmp_path / "resumed-4"), expected)


def test_sigkill_during_checkpoint_write(tmp_path, env):
    run = tmp_path / "run"
    proc = start_cli(cli_args(run), "--kill-at", f"4:{COMPLETE}")
    code, out = finish(proc)
    assert code == -signal.SIGKILL, out
    root = run / "base" / "checkpoints"
    assert checkpoint_steps(root) == [2]
    leftovers = [p for p in root.iterdir() if p.name.startswith(".step-4.")]
    assert leftovers and (leftovers[0] / COMPLETE).exists()  # killed between the marker and the rename
    train(run, resume=True)
    assert same(weights(run), reference())
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-4"]


def test_new_checkpoint_failure_leaves_previous_intact(tmp_path):
    root = tmp_path / "ckpts"
    with new_checkpoint(root, 1, keep=1) as tmp:
        (tmp / "w").write_text("one")
    for failing in ("body", COMPLETE):

        def fail(path, failing=failing):
            if path.name == failing:
                raise RuntimeError("crash")

        with pytest.raises(RuntimeError), new_checkpoint(root, 2, keep=1, on_write=fail) as tmp:
            (tmp / "w").write_text("two")
            if failing == "body":
                raise RuntimeError("crash")
        assert checkpoint_steps(root) == [1]
        assert sorted(p.name for p in root.iterdir()) == ["step-1"]
        assert (root / "step-1" / "w").read_text() == "one"
    (root / "step-7").mkdir()  # no COMPLETE marker: never a checkpoint
    assert checkpoint_steps(root) == [1] and checkpoint.latest(root) == root / "step-1"


def test_same_step_rewrite_and_pruning(tmp_path):
    root = tmp_path / "ckpts"
    for step, text in [(1, "a"), (2, "b"), (2, "c"), (3, "d")]:
        with new_checkpoint(root, step, keep=2) as tmp:
            (tmp / "w").write_text(text)
    assert checkpoint_steps(root) == [2, 3]
    assert (root / "step-2" / "w").read_text() == "c"
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_checkpoint_is_a_clear_error(tmp_path, env, monkeypatch):
    run = tmp_path / "run"

    def hook(path):
        if _in_step(path, 4) and path.name == "optimizer.safetensors":
            _enospc()

    monkeypatch.setattr(checkpoint, "WRITE_HOOK", hook)
    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        train(run)
    assert isinstance(err.value, BoothError)
    assert "could not write checkpoint step-4" in str(err.value)
    assert "No space left on device" in str(err.value) and "step-2 is intact" in str(err.value)
    root = run / "base" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2"]
    monkeypatch.setattr(checkpoint, "WRITE_HOOK", None)
    train(run, resume=True)
    assert same(weights(run), reference())


def test_disk_full_cli_message_has_no_traceback(tmp_path, env, monkeypatch):
    from click.testing import CliRunner

    from cascade_booth.cli import main

    monkeypatch.setattr(checkpoint, "save_file", _enospc)
    result = CliRunner().invoke(main, cli_args(tmp_path / "run", "--steps", "2"))
    assert result.exit_code == 2, result.output
    assert "error: could not write checkpoint step-2" in result.output
    assert "No space left on device; no earlier checkpoint exists" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OSError)


def test_disk_full_in_class_image_cache(tmp_path, monkeypatch):
    reference()
    cache = fresh_cache(tmp_path / "cache")
    monkeypatch.setattr(prior, "atomic_path", _enospc)
    with booth_env(cache), pytest.raises(prior.CacheWriteError, match="No space left on device"):
        train(tmp_path / "run")


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, env):
    run = copy_run(tmp_path / "run")
    shutil.rmtree(run / "base" / "checkpoints" / "step-4")
    (run / "base" / "checkpoints" / "step-2" / "weights.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(RunError, match=r"step-2: checkpoint cannot be read .*delete it to resume from an older one"):
        train(run, resume=True)


def test_disk_full_writing_run_json(tmp_path, monkeypatch):
    from cascade_booth import runfolder

    (tmp_path / "run.json").write_text('{"old": 1}')
    monkeypatch.setattr(runfolder.os, "replace", _enospc)
    with pytest.raises(runfolder.WriteError, match="No space left on device"):
        runfolder.RunFolder(tmp_path).write({"new": 2})
    assert runfolder.read_json(tmp_path / "run.json") == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_atomic_files_get_the_users_usual_permissions(tmp_path):
    import os

    from cascade_booth.runfolder import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
