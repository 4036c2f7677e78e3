"""The shared training loop for both stages; one step (``_Run.step``) reads top to bottom on one screen.

A stage (``stages/``) supplies a ``Job``: the UNet, deterministic batches and per-sample losses. The
trainer owns everything else: accelerate (mixed precision, several processes), the optimizer, prior
weighting, non-finite steps, checkpoints, interrupts and resume. How a step's gradients are applied
(plain, fp16 grad scaler, DeepSpeed engine, AdamW in backward) is chosen once, before the first step
(``update.make_update``). All randomness is derived from (seed, step, micro-step, process), so a resumed
run draws exactly what an uninterrupted one draws and ends with bitwise-equal weights. What a user should
know as it happens (resume point, skipped updates, checkpoints) goes to ``Callbacks.on_event``.

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
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR

from cascade_booth import checkpoint as ckpt
from cascade_booth.condcache import uncache_text_conditioning
from cascade_booth.config import StageConfig
from cascade_booth.devices import compute_precision, device, use_cpu
from cascade_booth.errors import InputError, RunError, TrainingAborted
from cascade_booth.interrupts import StopSignals
from cascade_booth.losses import prior_weighted_mean
from cascade_booth.optim import in_backward_problems, make_optimizer
from cascade_booth.seeds import derive_seed  # re-exported: the stages draw with it
from cascade_booth.update import DeepSpeedUpdate, make_update


@dataclass
class Batch:
    x0: torch.Tensor  # [B, 3, H, W] targets in [-1, 1]
    text: torch.Tensor  # [B, 77, d] precomputed T5 states
    is_prior: torch.Tensor  # [B] bool: class (prior) sample
    low_res: torch.Tensor | None = None  # stage two: the 64 px input


@dataclass
class Extra:
    """A trained tensor outside the UNet (stage one's identifier offset) at its own learning rate. Checkpoints
    keep it beside the UNet's weights; the stage writes it as ``<name>.safetensors`` (``stages.common``)."""

    param: torch.nn.Parameter
    lr: float


class Job(Protocol):
    name: str
    unet: torch.nn.Module
    params: list[torch.nn.Parameter]  # the UNet's trained parameters
    extras: dict[str, Extra]
    prior_weight: float

    def batch(self, index: int, generator: torch.Generator) -> Batch: ...
    def losses(self, unet: torch.nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class Callbacks:
    """Progress hooks for the CLI or any UI; every hook is optional.

    ``on_step`` is called for every step, also a skipped (non-finite) one, whose loss is then not finite.
    ``on_event`` gets what a user should read beside the progress bar, with the step it happened at: where a
    resume starts, a skipped update, a checkpoint written (main process only), nothing left to train. The CLI
    prints it above the bar (``clikit.TqdmCallbacks``); a stage also appends it to ``RUN/<stage>/events.jsonl``.
    """

    on_start: Callable[[int, int], None] | None = None  # (start_step, total_steps)
    on_step: Callable[[int, float, float], None] | None = None  # (step, loss, lr)
    on_event: Callable[[int, str], None] | None = None  # (step, message)
    on_validation: Callable[[torch.nn.Module, int], None] | None = None

    def event(self, step: int, message: str) -> None:
        if self.on_event:
            self.on_event(step, message)


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


def _schedule(optimizer: torch.optim.Optimizer, cfg: StageConfig, updates: int, extra_lrs: list[float]) -> LambdaLR:
    """The LR schedule after ``updates`` applied updates: linear warmup to ``cfg.lr`` (each ``Extra``'s group
    to its own lr, ``extra_lrs``), then constant.

    Built from the count alone (``last_epoch``), so a resume rebuilds it at the restored count, at the current
    ``cfg.lr`` (``--allow-drift`` may change it). A schedule that used cfg.steps (e.g. cosine decay to the end)
    would make a resume that raises steps differ from a straight run: session.check_resume would then refuse it.
    """
    warmup = max(cfg.warmup_steps, 1)
    for group, lr in zip(optimizer.param_groups, [cfg.lr, *extra_lrs], strict=True):
        group["initial_lr"] = lr  # what LambdaLR scales; required to start it past step 0
    return LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup), last_epoch=updates - 1)


class _Run:
    """One training run's state: the prepared model and optimizer, how updates apply, the schedule, the bad steps."""

    def __init__(self, job: Job, cfg: StageConfig, root: Path, seed: int, cb: Callbacks):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.job, self.cfg, self.root, self.seed, self.cb = job, cfg, root, seed, cb
        precision = compute_precision(cfg.mixed_precision, device())
        # accelerate keeps one precision per process and refuses another; a process that trains several runs
        # (a sweep, a UI, the tests) gives each its own. The process group (PartialState) stays.
        AcceleratorState._reset_state()
        self.acc = Accelerator(mixed_precision=precision, cpu=use_cpu())  # as parallel.init's
        problems = in_backward_problems(cfg, self.acc.num_processes)  # the config checked all but the processes
        if problems:
            raise InputError("; ".join(problems))
        if cfg.gradient_checkpointing:
            job.unet.enable_gradient_checkpointing()
        groups = [{"params": job.params}] + [{"params": [e.param], "lr": e.lr} for e in job.extras.values()]
        self.inner = make_optimizer(cfg.optimizer, groups, cfg.lr, self.acc.device)
        self.schedule = _schedule(self.inner, cfg, 0, [e.lr for e in job.extras.values()])
        self.unet, self.optimizer = self.acc.prepare(job.unet, self.inner)
        trained = job.params + [e.param for e in job.extras.values()]  # one global norm clips them all
        self.update = make_update(self.acc, self.unet, self.optimizer, trained, cfg.max_grad_norm)
        if job.extras and isinstance(self.update, DeepSpeedUpdate):
            raise InputError(f"{', '.join(job.extras)}: trained outside the UNet, which DeepSpeed's engine does not "
                             "hold; set identifier.offset_lr = 0 under DeepSpeed")
        if cfg.compile:  # 1.8x faster IF-I-XL LoRA steps on an H100 (tools/gpu-results.md); slow first step
            uncache_text_conditioning(job.unet)  # its row lookups would break the graph (measured without it)
            self.unet = torch.compile(self.unet)
        self.bad_steps = 0

    def restore(self) -> tuple[int, str]:
        """Continue from the newest complete checkpoint (step 0 if there is none); returns the step and a note."""
        found = ckpt.restore(self.root, self.job, self.optimizer, self.cfg.full, self.acc.scaler)
        if found is None:
            return 0, "resume: no complete checkpoint, starting at step 0"
        if found.final:  # kept when the final weights could not be written: no optimizer state to train on
            if found.step < self.cfg.steps:
                raise RunError(f"{found.folder} holds the final weights of step {found.step} only, not the optimizer "
                               f"state, so training cannot continue from it: resume with --steps {found.step} to "
                               "write them, or start over with --force")
            return found.step, f"resume: final weights kept in {found.folder.name}"
        self.bad_steps = found.bad_steps
        self.schedule = _schedule(self.inner, self.cfg, found.updates, [e.lr for e in self.job.extras.values()])
        return found.step, f"resume: continuing from step {found.step} ({found.folder})"

    def step(self, step: int) -> None:
        """One optimizer step, top to bottom: every micro-batch forward and backward, the update, the hooks."""
        job, cfg, acc, accum = self.job, self.cfg, self.acc, self.cfg.gradient_accumulation
        done, total = step + 1, 0.0
        for micro in range(accum):
            # Data and draws depend on the global micro-batch index alone, so N processes x A micro-batches
            # train on exactly the batches of one process x N*A micro-batches (the same global batch). The
            # trailing 0, 0 keep the draws of one process without accumulation what they always were.
            index = (step * accum + micro) * acc.num_processes + acc.process_index
            torch.manual_seed(derive_seed(self.seed, job.name, index, 0, 0, "global"))  # e.g. dropout
            gen = torch.Generator().manual_seed(derive_seed(self.seed, job.name, index, 0, 0))
            batch = job.batch(index, gen)
            sync = micro == accum - 1  # gradients are all-reduced once per step, after the last micro-batch
            with contextlib.nullcontext() if sync else acc.no_sync(self.unet):
                with self.update.autocast():
                    per_sample = job.losses(self.unet, batch, gen)  # [B]: one loss per sample
                loss = prior_weighted_mean(per_sample, batch.is_prior, job.prior_weight) / accum
                acc.backward(loss)
            if sync and acc.num_processes > 1:  # DDP all-reduces the UNet's gradients only
                for e in job.extras.values():
                    if e.param.grad is not None:
                        e.param.grad = acc.reduce(e.param.grad, reduction="mean")
            total += loss.detach().float()
        loss = acc.reduce(torch.as_tensor(total, device=acc.device), reduction="mean").item()  # same on all ranks
        problem = self.update.apply(loss)  # clip and step, or why not; the gradients are zeroed either way
        if problem is None:
            self.schedule.step()  # the warmup counts applied updates only
        else:
            self.skipped(done, problem)  # may stop the run (TrainingAborted)
        if self.cb.on_step:
            self.cb.on_step(done, loss, self.schedule.get_last_lr()[0])
        every = cfg.validation_every
        if problem is None and every and done % every == 0 and self.cb.on_validation:
            self.cb.on_validation(acc.unwrap_model(self.unet), done)

    def skipped(self, done: int, problem: str) -> None:
        self.cb.event(done, f"step {done}: {problem}, update skipped")
        if "scaler" in problem:  # fp16's scaler skips and lowers its scale by design: not a bad step
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
        if isinstance(self.update, DeepSpeedUpdate):  # train() keeps periodic checkpoints off; a signal stops
            raise TrainingAborted(f"{self.job.name}: stopped at step {done}; DeepSpeed runs write no checkpoint")
        if self.acc.is_main_process:
            path = ckpt.save(self.root, done, self.job, self.optimizer, self.schedule, self.cfg, self.bad_steps,
                             self.acc.scaler)
            self.cb.event(done, f"checkpoint: {path}")
        self.acc.wait_for_everyone()

    def stop_requested(self, signalled: bool) -> bool:
        """Whether any process got SIGINT/SIGTERM: all must save and stop at the same step."""
        if self.acc.num_processes == 1:
            return signalled
        flag = torch.tensor(float(signalled), device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item())


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
    run = _Run(job, cfg, ckpt_root, seed, cb)
    start, note = run.restore() if resume else (0, None)
    if cb.on_start:  # the stage commits its run folder here: events come after, into its log
        cb.on_start(start, cfg.steps)
    if note:
        cb.event(start, note)
    if start >= cfg.steps:
        cb.event(start, f"{job.name}: already trained to step {start}; nothing to do")
    with _Interrupt() as interrupt:
        for step in range(start, cfg.steps):
            run.step(step)
            done = step + 1
            if run.stop_requested(interrupt.signal is not None):
                run.save(done)
                name = signal.Signals(interrupt.signal).name if interrupt.signal else "a stop signal (other process)"
                raise TrainingAborted(
                    f"{job.name}: {name} received; checkpoint saved at step {done}. Run again with --resume."
                )
            if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                run.save(done)
    with torch.no_grad():
        ckpt.check_finite(ckpt.trained_tensors(job.unet, cfg.full), f"{job.name}: the final weights")
    job.unet = run.acc.unwrap_model(run.unet)
    return max(cfg.steps, start)
