"""Pieces both stages share: data order, image stacks, UNet loading, saving a finished stage."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image

from cascade_booth import parallel
from cascade_booth.condcache import cache_text_conditioning
from cascade_booth.config import StageConfig
from cascade_booth.images import to_tensor
from cascade_booth.lora import LORA_WEIGHTS, add_lora, save_lora
from cascade_booth.models import load_pretrained
from cascade_booth.runfolder import WriteError, atomic_path
from cascade_booth.session import RunContext
from cascade_booth.trainer import Callbacks, derive_seed


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


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


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
        if device.type == "cuda" and cfg.mixed_precision != "no":  # frozen base weights need no fp32 copy
            unet.to(torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora-init"))
            params = add_lora(unet, cfg.lora_rank)
        cache_text_conditioning(unet)  # its text branches stay frozen: each prompt computed once
    unet.to(device)
    unet.train()
    return unet, params


def save_stage_weights(unet: torch.nn.Module, folder: Path, full: bool) -> list[str]:
    """Write the final adapter (or full UNet) into ``folder`` through a temporary folder."""
    try:
        return _write_stage_weights(unet, folder, full)
    except OSError as err:
        raise WriteError(
            f"{folder}: could not write the final weights ({err.strerror or err}); the last checkpoint is "
            "intact: free space and run again with --resume"
        ) from None


def _write_stage_weights(unet: torch.nn.Module, folder: Path, full: bool) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=folder))
    try:
        if full:
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
            shutil.rmtree(folder / "unet", ignore_errors=True)
            os.replace(tmp / "unet", folder / "unet")
            return ["unet"]
        save_lora(unet, tmp)
        os.replace(tmp / LORA_WEIGHTS, folder / LORA_WEIGHTS)
        return [LORA_WEIGHTS]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish_stage(ctx: RunContext, name: str, unet, cfg: StageConfig, model_path: Path, extra: dict) -> None:
    """Write the final weights and mark the stage done: on the main process; the others wait for it."""
    parallel.main_first(lambda: _finish(ctx, name, unet, cfg, model_path, extra), lambda: None)


def _finish(ctx: RunContext, name: str, unet, cfg: StageConfig, model_path: Path, extra: dict) -> None:
    files = save_stage_weights(unet, ctx.run.stage_dir(name), cfg.full)
    meta = ctx.run.read()
    meta.setdefault("stages", {})[name] = {
        "done": True, "steps": cfg.steps, "model_path": str(model_path), "files": files,
        "lora_rank": None if cfg.full else cfg.lora_rank, "full": cfg.full, "variance": cfg.variance,
        "resolution": unet.config.sample_size, **extra,
    }
    ctx.run.write(meta)


class LossLog:
    """``RUN/<stage>/losses.jsonl``: one line per optimizer step, ``{"step", "loss", "lr"}``, main process only.

    The loss is the step's mean over all micro-batches and processes (null for a skipped, non-finite
    step). On resume the lines past the restored step are dropped first, so the file always tells the
    history of the weights that were trained.
    """

    FILE = "losses.jsonl"

    def __init__(self, folder: Path):
        self.path = folder / self.FILE

    @classmethod
    def attach(cls, callbacks: Callbacks, folder: Path) -> Callbacks:
        """``callbacks`` with the log chained after its ``on_start`` / ``on_step`` (unchanged off the main process)."""
        if not parallel.is_main():
            return callbacks
        log, start, step = cls(folder), callbacks.on_start, callbacks.on_step

        def on_start(first: int, total: int) -> None:
            log.start(first)
            if start:
                start(first, total)

        def on_step(done: int, loss: float, lr: float) -> None:
            log.step(done, loss, lr)
            if step:
                step(done, loss, lr)

        return dataclasses.replace(callbacks, on_start=on_start, on_step=on_step)

    def start(self, first: int) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= first]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def step(self, done: int, loss: float, lr: float) -> None:
        with self.path.open("a") as out:  # appended and flushed per step: a crash loses no finished line
            out.write(json.dumps({"step": done, "loss": loss if math.isfinite(loss) else None, "lr": lr}) + "\n")


__all__ = ["EpochOrder", "LossLog", "add_lora", "finish_stage", "load_unet", "open_rgb", "stack_images"]
