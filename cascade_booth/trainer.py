"""The shared training loop for both stages (one screen, top to bottom).

A stage (``stages/``) supplies a ``Job``: the UNet, deterministic batches and per-sample losses. The
trainer owns everything else: accelerate (mixed precision, several processes), the optimizer, prior
weighting, non-finite steps, checkpoints, interrupts and resume. All randomness is derived from
(seed, step, micro-step, process), so a resumed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import hashlib
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from cascade_booth import checkpoint as ckpt
from cascade_booth.config import StageConfig
from cascade_booth.errors import TrainingAborted
from cascade_booth.losses import prior_weighted_mean


@dataclass
class Batch:
    x0: torch.Tensor  # [B, 3, H, W] targets in [-1, 1]
    text: torch.Tensor  # [B, 77, d] precomputed T5 states
    is_prior: torch.Tensor  # [B] bool: class (prior) sample
    low_res: torch.Tensor | None = None  # stage two: the 64 px input


class Job(Protocol):
    name: str
    unet: torch.nn.Module
    params: list[torch.nn.Parameter]
    prior_weight: float

    def batch(self, index: int, generator: torch.Generator) -> Batch: ...
    def losses(self, unet: torch.nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class Callbacks:
    """Progress hooks for the CLI or any UI; every hook is optional."""

    on_start: Callable[[int, int], None] | None = None  # (start_step, total_steps)
    on_step: Callable[[int, float, float], None] | None = None  # (step, loss, lr)
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_validation: Callable[[torch.nn.Module, int], None] | None = None
    events: list[str] = field(default_factory=list)


def derive_seed(*parts: int | str) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:7], "little")


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the run can checkpoint and stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(job: Job, cfg: StageConfig, ckpt_root: Path, seed: int, resume: bool, cb: Callbacks) -> int:
    """Run ``cfg.steps`` optimizer steps of ``job``; returns the last step reached."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    if cfg.gradient_checkpointing:
        job.unet.enable_gradient_checkpointing()
    fused = acc.device.type == "cuda"
    optimizer = torch.optim.AdamW(job.params, lr=cfg.lr, weight_decay=1e-2, fused=fused)
    warmup = max(cfg.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    unet, optimizer = acc.prepare(job.unet, optimizer)
    start = ckpt.restore(ckpt_root, job, optimizer, schedule, cfg.full) if resume else 0
    if cb.on_start:
        cb.on_start(start, cfg.steps)
    bad_steps, rank, world = 0, acc.process_index, acc.num_processes
    with _Interrupt() as interrupt:
        for step in range(start, cfg.steps):
            total = 0.0
            for micro in range(cfg.gradient_accumulation):  # each micro-batch has its own seeded draws
                gen = torch.Generator().manual_seed(derive_seed(seed, job.name, step, micro, rank))
                index = (step * cfg.gradient_accumulation + micro) * world + rank
                batch = job.batch(index, gen)
                with acc.autocast():
                    per_sample = job.losses(unet, batch, gen)
                loss = prior_weighted_mean(per_sample, batch.is_prior, job.prior_weight) / cfg.gradient_accumulation
                acc.backward(loss)
                total += loss.detach().float()
            total = acc.reduce(torch.as_tensor(total, device=acc.device), reduction="mean").item()
            if not math.isfinite(total):  # never apply (or save) a non-finite update
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                cb.events.append(f"step {step + 1}: non-finite loss, update skipped")
                if bad_steps >= cfg.max_bad_steps:
                    raise TrainingAborted(
                        f"{job.name}: loss was non-finite on {bad_steps} steps; stopped at step {step + 1}. "
                        "Lower the learning rate or use bf16 instead of fp16."
                    )
                continue
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(job.params, cfg.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if cb.on_step:
                cb.on_step(done, total, schedule.get_last_lr()[0])
            if cfg.validation_every and done % cfg.validation_every == 0 and cb.on_validation:
                cb.on_validation(acc.unwrap_model(unet), done)
            stop = interrupt.signal is not None
            if acc.is_main_process and (stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                path = ckpt.save(ckpt_root, done, job, optimizer, schedule, cfg)
                if cb.on_checkpoint:
                    cb.on_checkpoint(done, path)
            if stop:
                name = signal.Signals(interrupt.signal).name
                raise TrainingAborted(
                    f"{job.name}: {name} received; checkpoint saved at step {done}. Run again with --resume."
                )
    acc.wait_for_everyone()
    job.unet = acc.unwrap_model(unet)
    return cfg.steps
