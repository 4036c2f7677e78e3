"""Shared pieces of ``tools/bench_gpu.py``: the ``Bench`` recorder (timing, FLOP counting, memory peaks, rows
written to ``$OUT/bench.json`` and ``bench.md``), failure notes, optimiser and scheduler helpers, and the training
step exactly as the trainer runs it (random batch, bf16 autocast, per-sample loss, prior-weighted mean) with the
weight snapshots that check an optimiser step moved the weights. The section modules ``bench_gpu_train`` and
``bench_gpu_sample`` build on these; run the benchmark through ``python tools/bench_gpu.py``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from cascade_booth.diffusion import training_losses
from cascade_booth.losses import prior_weighted_mean

DATASHEET_BF16 = 989e12  # H100 SXM dense bf16, TFLOP/s datasheet figure
GB = 1024**3
T0 = time.perf_counter()


# ----------------------------------------------------------------------------------------- utilities
class Bench:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.rows: list[dict] = []
        self.env: dict = {}
        self.peak_flops = float("nan")
        self.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        # --amp none (CPU smoke tests: this class of CPU runs bf16 ~100x slower than fp32) builds the
        # "bf16" models in fp32 and runs without autocast: same code paths, fp32 numbers.
        self.amp = args.amp == "bf16"
        self.lowp = torch.bfloat16 if self.amp else torch.float32

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp)

    def elapsed(self) -> float:
        return time.perf_counter() - T0

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_mem(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        return torch.cuda.max_memory_allocated() / GB if self.cuda else float("nan")

    def time_it(self, fn, warmup: int, steps: int) -> tuple[float, list[float], object]:
        """Median seconds of ``fn`` over ``steps`` calls after ``warmup``, synchronised around each."""
        out = None
        for _ in range(warmup):
            out = fn()
        self.sync()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), times, out

    def count_flops(self, fn) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            fn()
        self.sync()
        return float(fc.get_total_flops())

    def add(self, section: str, name: str, **kw):
        row = dict(section=section, name=name, **kw)
        t, fl = row.get("time_s"), row.get("flops")
        if t and fl and not math.isnan(t):
            row["tflops_s"] = fl / t / 1e12
            row["mfu_measured"] = fl / t / self.peak_flops if self.peak_flops == self.peak_flops else None
            row["mfu_datasheet"] = fl / t / DATASHEET_BF16
        self.rows.append(row)
        print("ROW " + json.dumps(row, default=str), flush=True)
        self.save()

    def save(self):
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "bench.json").write_text(json.dumps(dict(env=self.env, rows=self.rows), indent=1, default=str))
        (self.out / "bench.md").write_text(self.table())

    def table(self) -> str:
        head = "| section | config | samples | ms/step | peak GiB | TFLOP/step | TFLOP/s | MFU meas | MFU 989 | notes |"
        lines = [head, "|" + "---|" * 10]

        def f(v, spec):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

        for r in self.rows:
            fl = r.get("flops")
            lines.append(
                f"| {r['section']} | {r['name']} | {r.get('samples', '-')} "
                f"| {f(r.get('time_s') and r['time_s'] * 1e3, '.1f')} "
                f"| {f(r.get('peak_gb'), '.1f')} | {f(fl and fl / 1e12, '.2f')} | {f(r.get('tflops_s'), '.0f')} "
                f"| {f(r.get('mfu_measured') and 100 * r['mfu_measured'], '.1f')} "
                f"| {f(r.get('mfu_datasheet') and 100 * r['mfu_datasheet'], '.1f')} | {r.get('notes', '')} |"
            )
        return "\n".join(lines) + "\n"


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def failure_note(err: BaseException, oom: str = "OOM") -> str:
    """The notes of a row whose measurement failed."""
    return (oom if is_oom(err) else f"ERROR {type(err).__name__}: {err}")[:300]


class NoStepOptimizer:
    """Stands in for the optimiser when the update happens inside backward (gradient hooks)."""

    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        pass


def measure_full_row(b, name: str, step, params, samples: int, flops, notes: str, count: bool) -> float | None:
    """Time a full fine-tune step and add its row; returns its FLOPs (counted when ``count`` and none given).

    Rows with gradient checkpointing pass ``count=False``: they reuse the plain step's FLOPs.
    """
    a = b.args
    before = snapshot(params)
    first = step()
    ok = bool(torch.isfinite(first).item())
    moved = changed_fraction(before)
    del before
    if flops is None and count:
        flops = b.count_flops(step)
    t, times, loss = b.time_it(step, max(1, a.warmup - 1), max(2, a.steps // 2))
    b.add("full", name, samples=samples, time_s=t, times=times, peak_gb=b.peak_gb(), flops=flops,
          loss=float(loss), loss_finite=ok, weights_changed_frac=moved,
          notes=f"{notes}; loss ok={ok}; frac of sampled weights changed by 1 step at lr {a.full_lr:g}: {moved:.3f}")
    return flops


def fused_adamw(params, lr, device):
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # fused unsupported for this device/dtype
        return torch.optim.AdamW(params, lr=lr, foreach=True)


def ddpm_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(variance_type="learned_range", beta_schedule="squaredcos_cap_v2")


def set_attention(unet, kind: str):
    from diffusers.models.attention_processor import AttnAddedKVProcessor, AttnAddedKVProcessor2_0

    unet.set_attn_processor(AttnAddedKVProcessor2_0() if kind == "sdpa" else AttnAddedKVProcessor())


# ------------------------------------------------------------------------------------ training steps
def make_batch(b: Bench, n_inst: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 2 * n_inst
    x0 = (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(b.dev)
    emb = torch.randn(n, 77, 4096, generator=g).to(b.dev)  # precomputed T5-XXL states
    is_prior = torch.tensor([False] * n_inst + [True] * n_inst, device=b.dev)
    return x0, emb, is_prior


def train_step_fn(b: Bench, unet, opt, sched, x0, emb, is_prior, gen, cond_fn=None, channels_last=False):
    """One optimiser step exactly as the trainer runs it: bf16 autocast, per-sample loss, prior mean."""

    def step():
        opt.zero_grad(set_to_none=True)
        with b.autocast():
            kw = {}
            if cond_fn is not None:
                kw["cond"], kw["class_labels"] = cond_fn()
            xin = x0.contiguous(memory_format=torch.channels_last) if channels_last else x0
            per_sample = training_losses(unet, sched, xin, emb, gen, variance="learned", **kw)
            loss = prior_weighted_mean(per_sample, is_prior, 1.0)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def snapshot(params, limit=24, max_numel=4_000_000):
    picked = [p for p in params if p.numel() <= max_numel][:limit]
    return [(p, p.detach().clone()) for p in picked]


def changed_fraction(snap) -> float:
    changed = total = 0
    for p, old in snap:
        changed += int((p.detach() != old).sum())
        total += old.numel()
    return changed / max(total, 1)


class StepRows:
    """Measures one LoRA training-step row of ``section``: a finite first loss, the share of trainable weights
    it moved, the step's FLOPs (counted once per ``flops_key``, default (name, samples)) and its time."""

    def __init__(self, b: Bench, section: str):
        self.b, self.section, self.sched, self.flops = b, section, ddpm_scheduler(), {}

    def run(self, name, unet, params, batch, notes="", channels_last=False, flops_key=None, gen=None, cond_fn=None):
        b, (x0, emb, is_prior) = self.b, batch
        samples = x0.shape[0]
        opt = fused_adamw(params, b.args.lr, b.dev)
        gen = gen or torch.Generator().manual_seed(1)
        step = train_step_fn(b, unet, opt, self.sched, x0, emb, is_prior, gen, cond_fn=cond_fn,
                             channels_last=channels_last)
        b.reset_mem()
        try:
            before = snapshot(params)
            ok_loss = bool(torch.isfinite(step()).item())
            moved = changed_fraction(before)
            del before
            key = flops_key or (name, samples)
            if key not in self.flops:
                self.flops[key] = b.count_flops(step)
            t, times, loss = b.time_it(step, b.args.warmup, b.args.steps)
            b.add(self.section, name, samples=samples, time_s=t, times=times, peak_gb=b.peak_gb(),
                  flops=self.flops[key], loss=float(loss), loss_finite=ok_loss, trainable_changed_frac=moved,
                  notes=f"{notes}; loss ok={ok_loss}, params moved={moved:.2f}".strip("; "))
            return self.flops[key]
        except Exception as err:  # noqa: BLE001 - report and go on
            b.add(self.section, name, samples=samples, notes=failure_note(err))
        finally:
            del opt
            for p in params:
                p.grad = None
            b.reset_mem()
