"""Pieces both stages share: data order, image stacks, UNet loading, recording a run, saving a finished stage.

A stage changes its run folder only once training starts (``commit``, from the trainer's
``on_start``): a command refused by any check before that, even one in the trainer, changes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from safetensors.torch import save_file

from cascade_booth import checkpoint as ckpt
from cascade_booth import parallel
from cascade_booth.condcache import cache_text_conditioning
from cascade_booth.config import Config, StageConfig
from cascade_booth.devices import compute_precision, frozen_dtype
from cascade_booth.diskspace import WRITE_ERRORS, failed, file_bytes, reason, release, reserve
from cascade_booth.images import to_tensor
from cascade_booth.lora import LORA_WEIGHTS, add_lora, save_lora
from cascade_booth.losslog import LossLog
from cascade_booth.runfolder import RunFolder, WriteError, checkpoint_steps
from cascade_booth.safeload import load_pretrained
from cascade_booth.session import RunContext
from cascade_booth.trainer import Callbacks, Extra, derive_seed, train


class EpochOrder:
    """Sample ``k`` of the global sample stream: epoch ``e`` is a seeded permutation of ``range(n)``.

    Every item is seen once per epoch, and the order is a pure function of (seed, position), so a
    resumed run reads exactly the data an uninterrupted run reads.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}
        return self._perms[epoch]

    def take(self, start: int, k: int) -> torch.Tensor:
        return torch.stack([self._perm(c // self.n)[c % self.n] for c in range(start, start + k)])


def stack_images(images: list[Image.Image], size: int) -> torch.Tensor:
    return torch.stack([to_tensor(img, size) for img in images])


def load_unet(model_path: Path, cfg: StageConfig, device: torch.device, seed: int) -> tuple[torch.nn.Module, list]:
    """The stage's UNet on ``device`` with LoRA (frozen base in the compute dtype) or all weights trainable.

    The adapter's random init is drawn from its own seed, not the global RNG, so the same seed gives
    the same initial adapter whatever ran earlier in the process.
    """
    from diffusers import UNet2DConditionModel

    unet = load_pretrained(UNet2DConditionModel, model_path / "unet")
    if cfg.full:
        unet.requires_grad_(True)
        params = list(unet.parameters())
    else:
        dtype = frozen_dtype(device, compute_precision(cfg.mixed_precision, device))  # frozen: no fp32 copy
        if dtype != torch.float32:
            unet.to(dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            params = add_lora(unet, cfg.lora_rank, text=cfg.lora_text)
        cache_text_conditioning(unet)  # its text branches stay frozen: each prompt computed once
    unet.to(device)
    unet.train()
    return unet, params


class PreparedStage(NamedTuple):
    """A stage ready to train, what both stages' ``prepare`` return: the locked run (``ctx``, with the
    model folder in ``ctx.model_path``), the stage's Job (``batch()`` / ``losses()``) and the finished config."""

    ctx: RunContext
    job: Any
    config: Config


def train_prepared(stage: PreparedStage, name: str, callbacks: Callbacks, resume: bool, extra: dict,
                   clear: bool = False, trainer: Callable = train) -> None:
    """Train a prepared stage with ``trainer`` (``trainer.train``) and write its final weights; unlock the run.

    The run folder changes only once the trainer starts (``commit``); ``clear`` drops the old stage then.
    """
    ctx, job, cfg = stage
    stage_cfg = getattr(cfg, name)
    callbacks = before_start(LossLog.attach(callbacks, ctx.run.stage_dir(name)),
                             lambda: commit(ctx, name, job.unet, stage_cfg.full, clear=clear))
    try:
        trainer(job, stage_cfg, ctx.run.checkpoint_root(name), cfg.seed, resume, callbacks)
        finish_stage(ctx, name, job, stage_cfg, ctx.model_path, extra=extra)
    finally:
        release_space(ctx.run, name)
        ctx.run.unlock()


def _reserved(run: RunFolder, name: str) -> Path:
    return run.path / f".reserved-{name}"


def final_bytes(unet: torch.nn.Module, full: bool) -> int:
    """About the size of the stage's final weights file(s)."""
    return file_bytes(ckpt.trained_tensors(unet, full).values())


def before_start(callbacks: Callbacks, fn: Callable[[], None]) -> Callbacks:
    """``callbacks`` whose ``on_start`` first calls ``fn``: the trainer calls it once all its checks passed."""
    start = callbacks.on_start

    def on_start(first: int, total: int) -> None:
        fn()
        if start:
            start(first, total)

    return dataclasses.replace(callbacks, on_start=on_start)


def commit(ctx: RunContext, name: str, unet: torch.nn.Module, full: bool, clear: bool = False) -> None:
    """Training starts: hold the final weights' disk space, clear the old stage (``clear``), write run.json.

    Main process only; the others learn of a failure here rather than wait in the first step.
    """

    def write() -> None:
        reserve(_reserved(ctx.run, name), final_bytes(unet, full), f"the final weights of stage '{name}'")
        if clear:
            shutil.rmtree(ctx.run.stage_dir(name), ignore_errors=True)
        ctx.run.write(ctx.meta)

    parallel.main_first(write, lambda: None)


def release_space(run: RunFolder, name: str) -> None:
    if parallel.is_main():  # the file is the main process's, in a folder all processes may share
        release(_reserved(run, name))


def save_stage_weights(unet: torch.nn.Module, folder: Path, full: bool,
                       extras: Mapping[str, Extra] | None = None) -> list[str]:
    """Write the final adapter (or full UNet) into ``folder`` through a temporary folder; each ``Extra``
    as ``<name>.safetensors`` (one tensor of that name) first. Returns the files, as run.json lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=folder))
    try:
        files = []
        for name, tensor in ckpt.extra_state(extras or {}).items():
            save_file({name: tensor}, str(tmp / f"{name}.safetensors"))
            os.replace(tmp / f"{name}.safetensors", folder / f"{name}.safetensors")
            files.append(f"{name}.safetensors")
        if full:
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
            if (folder / "unet").exists():  # the old UNet goes only once the new one is complete
                os.replace(folder / "unet", tmp / "old-unet")
            os.replace(tmp / "unet", folder / "unet")
            return ["unet", *files]
        save_lora(unet, tmp)
        os.replace(tmp / LORA_WEIGHTS, folder / LORA_WEIGHTS)
        return [LORA_WEIGHTS, *files]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kept_for_resume(ctx: RunContext, name: str, job, cfg: StageConfig, err: BaseException) -> str:
    """Why the final weights are not written, and where the trained weights wait for ``--resume``."""
    unet = job.unet
    path = ctx.run.stage_dir(name) / ("unet" if cfg.full else LORA_WEIGHTS)
    head = failed(path, err, final_bytes(unet, cfg.full))
    root = ctx.run.checkpoint_root(name)
    steps = checkpoint_steps(root)
    if not steps or steps[-1] < cfg.steps:  # no checkpoint holds them (--checkpoint-every 0)
        try:
            ckpt.save_final(root, cfg.steps, unet, cfg, job.extras)
            steps.append(cfg.steps)
        except WRITE_ERRORS as second:
            last = f"the last checkpoint step-{steps[-1]} is intact" if steps else "there is no earlier checkpoint"
            return f"{head}; the trained weights could not be kept as a checkpoint either ({reason(second)}); {last}"
    return (f"{head}. The trained weights are kept in {root / f'step-{steps[-1]}'}: free some space and run the "
            "same command with --resume to write them (nothing is trained again)")


def finish_stage(ctx: RunContext, name: str, job, cfg: StageConfig, model_path: Path, extra: dict) -> None:
    """Write the final weights and mark the stage done: on the main process; the others wait for it."""
    parallel.main_first(lambda: _finish(ctx, name, job, cfg, model_path, extra), lambda: None)


def _finish(ctx: RunContext, name: str, job, cfg: StageConfig, model_path: Path, extra: dict) -> None:
    release_space(ctx.run, name)  # held for exactly this write
    unet = job.unet
    try:
        files = save_stage_weights(unet, ctx.run.stage_dir(name), cfg.full, job.extras)
    except WRITE_ERRORS as err:
        raise WriteError(_kept_for_resume(ctx, name, job, cfg, err), err) from None
    meta = ctx.run.read()
    meta.setdefault("stages", {})[name] = {
        "done": True, "steps": cfg.steps, "model_path": str(model_path), "files": files,
        "lora_rank": None if cfg.full else cfg.lora_rank, "full": cfg.full, "variance": cfg.variance,
        "resolution": unet.config.sample_size, **extra,
    }
    ctx.run.write(meta)


__all__ = ["EpochOrder", "PreparedStage", "load_unet", "stack_images", "train_prepared"]
