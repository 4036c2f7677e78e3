"""Several processes: ``accelerate launch`` with 2 CPU processes (gloo) trains both stages like one process.

The global batch is per-process batch x processes x gradient accumulation, and every draw depends on
the global micro-batch index alone, so 2 processes x 1 micro-batch must follow the loss curve and end
with the weights of 1 process x 2 micro-batches (DDP's gradient mean = accumulation's mean, up to
float rounding). The one-process runs happen in this process; the two-process ones in one launch of
``tests/helpers_ddp.py`` (train-base, train-sr, then a resume of a one-process checkpoint).
Class images are split by rank: the launch makes each image once, and they equal one process's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_reliability import SUBJECT, booth_env, class_image_folder
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("helpers_ddp.py")
LAUNCH_S = 400

CONFIG = """
seed = 0
[model]
base = "tiny"
sr = "tiny"
upscaler = "none"
[identifier]
offset_lr = 1e-2  # a tensor outside the UNet: DDP does not all-reduce it, the trainer must
[prior]
class_images = 3  # one image per group, 3 groups: rank 0 gets groups 0 and 2, rank 1 group 1
sampler = "dpm++"
sample_steps = 2
batch_size = 1
[base]
steps = 3
batch_size = 1
lr = 1e-4
warmup_steps = 1
checkpoint_every = 2
gradient_accumulation = {accum}
[sr]
steps = 2
batch_size = 1
lr = 1e-4
checkpoint_every = 0
gradient_accumulation = {accum}
"""


def _free_port() -> int:
    with socket.socket() as sock:  # not 29500: another launch on this machine may hold it
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(args: list[str], cache: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CASCADE_BOOTH_CACHE=str(cache), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_S)
    return proc.returncode, proc.stdout + proc.stderr


def _losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, len(lines) + 1))
    return [line["loss"] for line in lines]


def _assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = (load_file(str(folder / "pytorch_lora_weights.safetensors")) for folder in (a, b))
    if (a / "identifier_offset.safetensors").exists():  # stage one's learned identifier offset
        for w, folder in ((wa, a), (wb, b)):
            w.update(load_file(str(folder / "identifier_offset.safetensors")))
        assert wa["identifier_offset"].abs().max() > 1e-3
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6, msg=key)


def _one_process(tmp_path: Path, cache: Path, config: Path) -> Path:
    """Stage one, a copy cut back to its step-2 checkpoint, then stage two: 1 process, accumulation 2."""
    from cascade_booth.config import load_config
    from cascade_booth.session import TrainRequest
    from stages import base, sr

    run = tmp_path / "one"
    with booth_env(cache):
        base.run(TrainRequest(subject=SUBJECT, class_noun="clock", run=run, config=load_config(config)))
        resumed = shutil.copytree(run, tmp_path / "resumed")
        shutil.rmtree(resumed / "base" / "checkpoints" / "step-3")
        (resumed / "base" / "pytorch_lora_weights.safetensors").unlink()
        (resumed / "base" / "identifier_offset.safetensors").unlink()
        sr.run(sr.SRRequest(run=run, config=config))
    return run


def _cache_with_models(dest: Path, models: Path) -> Path:
    shutil.copytree(models, dest / "models")
    return dest


def test_two_processes_train_both_stages_like_one_with_accumulation(tmp_path, tiny_paths, one_thread):
    models = tiny_paths["base"].parents[1]
    one_cfg, two_cfg = tmp_path / "one.toml", tmp_path / "two.toml"
    one_cfg.write_text(CONFIG.format(accum=2))
    two_cfg.write_text(CONFIG.format(accum=1))
    one_cache, two_cache = _cache_with_models(tmp_path / "c1", models), _cache_with_models(tmp_path / "c2", models)
    one = _one_process(tmp_path, one_cache, one_cfg)
    two, resumed = tmp_path / "two", tmp_path / "resumed"
    code, out = _launch([str(HELPER), str(two_cfg), str(SUBJECT), str(two), str(resumed)], two_cache)
    assert code == 0, out
    assert "Traceback" not in out

    for stage in ("base", "sr"):  # the same loss curve and final weights
        np.testing.assert_allclose(_losses(two / stage), _losses(one / stage), rtol=1e-5, err_msg=stage)
        _assert_close_weights(two / stage, one / stage)
    # A one-process checkpoint resumed by two processes (all ranks restore step 2) ends the same.
    np.testing.assert_allclose(_losses(resumed / "base"), _losses(one / "base"), rtol=1e-5)
    _assert_close_weights(resumed / "base", one / "base")

    # Class images: each made once, split by rank, pixel-equal to the one-process images.
    made = {int(line.split()[1]): json.loads(line.split(" MADE ")[1]) for line in out.splitlines()
            if line.startswith("RANK ")}
    assert made == {0: [0, 2], 1: [1]}, out
    folder, reference = class_image_folder(two_cache), class_image_folder(one_cache)
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    for png in folder.glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(reference / png.name))), png.name

    # The main process alone wrote the checkpoints (one line each) and run.json.
    assert out.count(f"checkpoint: {two / 'base' / 'checkpoints' / 'step-2'}") == 1
    assert json.loads((two / "run.json").read_text())["stages"]["sr"]["done"]


def test_a_plain_run_is_one_process_without_a_process_group(monkeypatch):
    """Without a launcher nothing starts a process group and every helper is the one-process identity."""
    from cascade_booth import parallel

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parallel.init()
    assert not parallel.launched() and not parallel.active()
    assert (parallel.rank(), parallel.world(), parallel.is_main()) == (0, 1, True)
    assert parallel.shard([0, 1, 2]) == [0, 1, 2] and parallel.broadcast("x") == "x"
    assert parallel.main_first(lambda: "main", lambda: "other") == "main"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel.launched()


def test_the_launchers_echo_of_a_ctrl_c_is_not_a_second_signal():
    """Ctrl-C under ``accelerate launch`` reaches each process twice (terminal, then the launcher): the
    run must still finish its step and checkpoint, not stop at once as on a second, later signal."""
    from cascade_booth.trainer import _Interrupt

    with _Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert interrupt.signal == signal.SIGINT


def test_deepspeed_refuses_checkpoints_and_accumulation(monkeypatch):
    """Under a DeepSpeed launch on GPUs, what cannot work is refused before any model is wrapped."""
    from cascade_booth import trainer
    from cascade_booth.config import StageConfig
    from cascade_booth.errors import InputError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InputError, match=r"gradient_accumulation must be 1.*--checkpoint-every 0"):
        trainer._check_deepspeed(StageConfig(gradient_accumulation=2, checkpoint_every=250), resume=False)
    with pytest.raises(InputError, match=r"--resume are not supported"):
        trainer._check_deepspeed(StageConfig(checkpoint_every=0), resume=True)
    trainer._check_deepspeed(StageConfig(checkpoint_every=0), resume=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # accelerate ignores DeepSpeed on CPU
    trainer._check_deepspeed(StageConfig(gradient_accumulation=2), resume=True)
