"""The shared training loop for both stages (one screen, top to bottom).

A stage (``stages/``) supplies a ``Job``: the UNet, deterministic batches and per-sample losses. The
trainer owns everything else: accelerate (mixed precision, several processes), the optimizer, prior
weighting, non-finite steps, checkpoints, interrupts and resume. All randomness is derived from
(seed, step, micro-step, process), so a resumed run draws exactly what an uninterrupted one draws and
ends with bitwise-equal weights.

Resume rules: ``resume=True`` continues from the newest complete checkpoint; with none it starts at
step 0 (a run interrupted before its first checkpoint); on a finished run (a checkpoint at
``cfg.steps`` exists) it trains nothing. A run with checkpoints enabled always ends with a checkpoint
at its last step, so a crash while the stage's final weights are written loses no training.
``--resume`` may raise ``cfg.steps`` (never below the newest checkpoint: ``session.check_resume``): the
learning-rate schedule does not depend on the total, so 4 steps resumed to 6 equal 6 steps straight.

Non-finite steps: a step whose loss or gradients are not finite is not applied (fp16 with a grad
scaler: the scaler's skipped steps are not counted, it lowers its scale by design); after
``cfg.max_bad_steps`` such steps the run stops. Non-finite weights are never written to a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from cascade_booth import checkpoint as ckpt
from cascade_booth.condcache import uncache_text_conditioning
from cascade_booth.config import StageConfig
from cascade_booth.errors import InputError, RunError, TrainingAborted
from cascade_booth.interrupts import StopSignals
from cascade_booth.losses import prior_weighted_mean
from cascade_booth.optim import InBackwardAdamW, in_backward_problems, make_optimizer


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
    """Progress hooks for the CLI or any UI; every hook is optional.

    ``on_step`` is called for every step, also a skipped (non-finite) one, whose loss is then not finite.
    """

    on_start: Callable[[int, int], None] | None = None  # (start_step, total_steps)
    on_step: Callable[[int, float, float], None] | None = None  # (step, loss, lr)
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_validation: Callable[[torch.nn.Module, int], None] | None = None
    events: list[str] = field(default_factory=list)


def derive_seed(*parts: int | str) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:7], "little")


class _Interrupt(StopSignals):
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the run can checkpoint and stop.

    A second signal stops at once (KeyboardInterrupt); the checkpoint being written is then dropped.
    The same signal again within ``ECHO_S`` is not a second one: on Ctrl-C under ``accelerate launch``
    each process gets SIGINT from the terminal and, moments later, the same SIGINT forwarded by the launcher.
    """

    ECHO_S = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.signal: int | None = None
        self._at = 0.0

    def on_signal(self, signum: int) -> None:
        if self.signal is not None:
            if signum == self.signal and time.monotonic() - self._at < self.ECHO_S:
                return
            raise KeyboardInterrupt
        self.signal, self._at = signum, time.monotonic()


def _warmup(steps: int) -> Callable[[int], float]:
    # Linear warmup, then constant. A schedule that used cfg.steps (e.g. cosine decay to the end) would make
    # a resume that raises steps differ from a straight run: session.check_resume would then have to refuse it.
    warmup = max(steps, 1)
    return lambda s: min(1.0, (s + 1) / warmup)


class _Loop:
    """One training run's state: the prepared model and optimizer, the schedule and the bad-step count."""

    def __init__(self, job: Job, cfg: StageConfig, root: Path, seed: int, cb: Callbacks):
        from accelerate import Accelerator

        self.job, self.cfg, self.root, self.seed, self.cb = job, cfg, root, seed, cb
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
        problems = in_backward_problems(cfg, self.acc.num_processes)  # the config checked all but the processes
        if problems:
            raise InputError("; ".join(problems))
        if cfg.gradient_checkpointing:
            job.unet.enable_gradient_checkpointing()
        optimizer = make_optimizer(cfg.optimizer, job.params, cfg.lr, self.acc.device)
        self.lr_factor = _warmup(cfg.warmup_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        self.unet, self.optimizer = self.acc.prepare(job.unet, optimizer)
        self.in_backward = optimizer if isinstance(optimizer, InBackwardAdamW) else None
        if self.in_backward is not None:
            self.in_backward.attach()
        if cfg.compile:  # 1.8x faster IF-I-XL LoRA steps on an H100 (tools/gpu-results.md); slow first step
            uncache_text_conditioning(job.unet)  # its row lookups would break the graph (measured without it)
            self.unet = torch.compile(self.unet)
        self.bad_steps = 0

    def restore(self) -> int:
        """Continue from the newest complete checkpoint (step 0 if there is none)."""
        found = ckpt.restore(self.root, self.job, self.optimizer, self.schedule, self.cfg.full, self.acc.scaler)
        if found is None:
            self.cb.events.append("resume: no complete checkpoint, starting at step 0")
            return 0
        if found.final:  # kept when the final weights could not be written: no optimizer state to train on
            if found.step < self.cfg.steps:
                raise RunError(f"{found.folder} holds the final weights of step {found.step} only, not the optimizer "
                               f"state, so training cannot continue from it: resume with --steps {found.step} to "
                               "write them, or start over with --force")
            self.cb.events.append(f"resume: final weights kept in {found.folder.name}")
            return found.step
        self.bad_steps = found.bad_steps
        if self.schedule.base_lrs != [self.cfg.lr] * len(self.schedule.base_lrs):  # --allow-drift changed lr
            self.schedule.base_lrs = [self.cfg.lr] * len(self.schedule.base_lrs)
            for group in self.optimizer.param_groups:
                group["initial_lr"] = self.cfg.lr
                group["lr"] = self.cfg.lr * self.lr_factor(self.schedule.last_epoch)
            self.schedule._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.cb.events.append(f"resume: continuing from {found.folder.name}")
        return found.step

    @property
    def deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.acc.distributed_type == DistributedType.DEEPSPEED

    def _autocast(self) -> contextlib.AbstractContextManager:
        """accelerate's autocast. Under DeepSpeed accelerate autocasts nothing and a bf16/fp16 engine holds the
        UNet in that dtype, so the fp32 batches are autocast to it."""
        if not self.deepspeed:
            return self.acc.autocast()
        engine = self.unet
        dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float16 if engine.fp16_enabled() else None
        return torch.autocast(self.acc.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def accumulate(self, step: int) -> float:
        """Forward and backward all micro-batches of ``step``; returns the mean loss over processes."""
        cfg, job, rank, world = self.cfg, self.job, self.acc.process_index, self.acc.num_processes
        accum, total = cfg.gradient_accumulation, 0.0
        for micro in range(accum):
            # Data and draws depend on the global micro-batch index alone, so N processes x A micro-batches
            # train on exactly the batches of one process x N*A micro-batches (the same global batch). The
            # trailing 0, 0 keep the draws of one process without accumulation what they always were.
            index = (step * accum + micro) * world + rank
            torch.manual_seed(derive_seed(self.seed, job.name, index, 0, 0, "global"))  # e.g. dropout
            gen = torch.Generator().manual_seed(derive_seed(self.seed, job.name, index, 0, 0))
            batch = job.batch(index, gen)
            last = micro == accum - 1  # gradients are all-reduced once per step, after the last micro-batch
            with contextlib.nullcontext() if last else self.acc.no_sync(self.unet):
                with self._autocast():
                    per_sample = job.losses(self.unet, batch, gen)
                loss = prior_weighted_mean(per_sample, batch.is_prior, job.prior_weight) / accum
                self.acc.backward(loss)
            total += loss.detach().float()
        return self.acc.reduce(torch.as_tensor(total, device=self.acc.device), reduction="mean").item()

    def apply(self, loss: float) -> str | None:
        """Clip and apply the gradients; returns why nothing was applied (None if it was)."""
        problem = None if math.isfinite(loss) else "non-finite loss"
        if self.in_backward is not None and self.in_backward.nonfinite_step():
            problem = problem or "non-finite gradients"  # the hooks left those parameters unchanged
        if problem is None:
            max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
            norm = self.acc.clip_grad_norm_(self.job.params, max_norm)
            if self.acc.scaler is not None:  # fp16 on GPU: the scaler skips overflowing steps itself
                scale = self.acc.scaler.get_scale()
                self.optimizer.step()  # a fused AdamW skips inside its kernel: only the lowered scale tells
                skipped = self.optimizer.step_was_skipped or self.acc.scaler.get_scale() < scale
                problem = "fp16 gradient overflow (scaler)" if skipped else None
            elif norm is not None and not bool(torch.isfinite(torch.as_tensor(norm))):  # DeepSpeed: a float
                problem = "non-finite gradients"
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if problem is None:
            self.schedule.step()
        return problem

    def skipped(self, done: int, problem: str) -> None:
        self.cb.events.append(f"step {done}: {problem}, update skipped")
        if "scaler" in problem:
            return
        self.bad_steps += 1
        if self.bad_steps >= self.cfg.max_bad_steps:
            last = ckpt.latest(self.root)
            raise TrainingAborted(
                f"{self.job.name}: loss or gradients were non-finite on {self.bad_steps} steps; stopped at step "
                f"{done} ({'last checkpoint: ' + last.name if last else 'no checkpoint'}). "
                "Lower the learning rate or use bf16 instead of fp16."
            )

    def save(self, done: int) -> None:
        if self.deepspeed:  # train() keeps periodic checkpoints off; a stop signal ends the run without one
            raise TrainingAborted(f"{self.job.name}: stopped at step {done}; DeepSpeed runs write no checkpoint")
        if self.acc.is_main_process:
            path = ckpt.save(self.root, done, self.job, self.optimizer, self.schedule, self.cfg, self.bad_steps,
                             self.acc.scaler)
            if self.cb.on_checkpoint:
                self.cb.on_checkpoint(done, path)
        self.acc.wait_for_everyone()

    def stop_requested(self, signalled: bool) -> bool:
        """Whether any process got SIGINT/SIGTERM: all must save and stop at the same step."""
        if self.acc.num_processes == 1:
            return signalled
        flag = torch.tensor(float(signalled), device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item())

    def step(self, step: int) -> None:
        done = step + 1
        loss = self.accumulate(step)
        problem = self.apply(loss)
        if problem is not None:
            self.skipped(done, problem)
        if self.cb.on_step:
            self.cb.on_step(done, loss, self.schedule.get_last_lr()[0])
        every = self.cfg.validation_every
        if problem is None and every and done % every == 0 and self.cb.on_validation:
            self.cb.on_validation(self.acc.unwrap_model(self.unet), done)


def _check_deepspeed(cfg: StageConfig, resume: bool) -> None:
    """Refuse, before any model is wrapped, what does not work under ``accelerate launch`` with DeepSpeed."""
    from accelerate.utils import parse_flag_from_env

    if not parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") or not torch.cuda.is_available():
        return  # accelerate ignores DeepSpeed on CPU (the trainer's Accelerator has cpu=True there)
    problems = []
    if cfg.gradient_accumulation > 1:  # DeepSpeed counts micro-batches and steps on its own schedule
        problems.append("gradient_accumulation must be 1 (use more GPUs or a larger batch_size)")
    if cfg.checkpoint_every or resume:  # ZeRO shards the optimizer state; our checkpoints hold it whole
        problems.append("checkpoints and --resume are not supported: set --checkpoint-every 0")
    if problems:
        raise InputError("under DeepSpeed, " + "; ".join(problems))


def train(job: Job, cfg: StageConfig, ckpt_root: Path, seed: int, resume: bool, cb: Callbacks) -> int:
    """Run ``cfg.steps`` optimizer steps of ``job``; returns the last step reached."""
    _check_deepspeed(cfg, resume)
    loop = _Loop(job, cfg, ckpt_root, seed, cb)
    start = loop.restore() if resume else 0
    if start >= cfg.steps:
        cb.events.append(f"{job.name}: already trained to step {start}; nothing to do")
    if cb.on_start:
        cb.on_start(start, cfg.steps)
    with _Interrupt() as interrupt:
        for step in range(start, cfg.steps):
            loop.step(step)
            done = step + 1
            if loop.stop_requested(interrupt.signal is not None):
                loop.save(done)
                name = signal.Signals(interrupt.signal).name if interrupt.signal else "a stop signal (other process)"
                raise TrainingAborted(
                    f"{job.name}: {name} received; checkpoint saved at step {done}. Run again with --resume."
                )
            if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                loop.save(done)
    with torch.no_grad():
        ckpt.check_finite(ckpt.trained_tensors(job.unet, cfg.full), f"{job.name}: the final weights")
    job.unet = loop.acc.unwrap_model(loop.unet)
    return max(cfg.steps, start)
