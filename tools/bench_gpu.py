"""Time, memory and model-FLOP utilisation of cascade-booth's training and sampling steps on a GPU.

Runs the repo's own building blocks (``cascade_booth.lora.add_lora``,
``cascade_booth.diffusion.training_losses`` / ``sr_condition``, ``cascade_booth.losses.prior_weighted_mean``)
on random-weight UNets with DeepFloyd IF's real architectures (``tools/if_configs.py``):

1. ``lora``   IF-I-XL stage-one LoRA step with prior batch (N instance + N class, 64 px), levers as rows.
2. ``full``   IF-I-XL full fine-tune memory: optimiser / precision / checkpointing options.
   ``fullx``  the same with fp32 weights and AdamW moments in bf16, updated inside backward.
3. ``sr``     IF-II-L stage-two LoRA step (256 px, 6-channel input, noise-level class labels).
4. ``gen``    IF-I-XL class-image sampling throughput (DPM-Solver++, CFG, 25 steps).
5. ``compile`` torch.compile of the UNet in the LoRA step (slow to build; last, skipped when the budget is short).

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts for one whole step (forward and
backward as executed: for LoRA no weight gradients of the frozen base; matmuls, convolutions and SDPA
only). Rows with gradient checkpointing reuse the FLOPs of the same step without it (model FLOPs: the
recomputation is not credited). MFU = FLOPs / step time / peak, with the peak measured in the same run
(8192^3 bf16 matmul on random data) and, separately, against the 989 TFLOP/s H100 SXM dense-bf16 datasheet.

GPU:  python tools/bench_gpu.py                      (writes bench.json and bench.md to $OUT if set)
CPU:  python tools/bench_gpu.py --device cpu --model cpu-100m --steps 3
      (on CPU the defaults become --sr-model cpu-sr --amp none: fp32, since CPUs without bf16 units run
      bf16 ~100x slower; still tens of minutes on 2 cores. Smoke test of every code path in minutes:
      --device cpu --model cpu-tiny --sr-model cpu-tiny-sr --steps 1 --warmup 0 --batch 1 --big-batches 2
      --gen-batch 1 --gen-steps 2)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from if_configs import build_unet, param_count, resolve  # a sibling: the script's folder is first on sys.path

from cascade_booth.diffusion import sr_condition, training_losses
from cascade_booth.lora import add_lora
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


def lora_section(b: Bench):
    a = b.args
    sched = ddpm_scheduler()
    n_inst = a.batch
    x0, emb, is_prior = make_batch(b, n_inst, 64)
    flops_cache: dict[tuple, float] = {}

    def run(name, unet, params, x0, emb, is_prior, notes="", channels_last=False, ckpt_of=None, lr=a.lr):
        samples = x0.shape[0]
        opt = fused_adamw(params, lr, b.dev)
        gen = torch.Generator().manual_seed(1)
        step = train_step_fn(b, unet, opt, sched, x0, emb, is_prior, gen, channels_last=channels_last)
        b.reset_mem()
        try:
            before = snapshot(params)
            first = step()  # correctness: finite loss, adapter weights move
            ok_loss = bool(torch.isfinite(first).item())
            moved = changed_fraction(before)
            del before
            key = ckpt_of or (name, samples)
            if key not in flops_cache:
                flops_cache[key] = b.count_flops(step)
            t, times, loss = b.time_it(step, a.warmup, a.steps)
            b.add(
                "lora",
                name,
                samples=samples,
                time_s=t,
                times=times,
                peak_gb=b.peak_gb(),
                flops=flops_cache[key],
                loss=float(loss),
                loss_finite=ok_loss,
                trainable_changed_frac=moved,
                notes=f"{notes}; loss ok={ok_loss}, params moved={moved:.2f}".strip("; "),
            )
            return flops_cache[key]
        except Exception as err:  # noqa: BLE001 - report and go on
            b.add("lora", name, samples=samples, notes=failure_note(err))
        finally:
            del opt
            for p in params:
                p.grad = None
            b.reset_mem()

    # fp32 frozen base + bf16 autocast (the CPU trainer path and the "no cast" baseline)
    b.reset_mem()
    unet = build_unet(a.model, torch.float32, b.dev)
    params = add_lora(unet, a.rank)
    unet.train()
    run("fp32 base + autocast, SDPA", unet, params, x0, emb, is_prior, notes="fp32 weights")
    del unet, params
    b.reset_mem()

    # bf16 frozen base, fp32 LoRA master weights: the trainer's CUDA path (stages/common.load_unet)
    unet = build_unet(a.model, b.lowp, b.dev)
    params = add_lora(unet, a.rank)
    dtypes = sorted({str(p.dtype) for p in params})
    unet.train()
    base_flops = run(
        "bf16 base + fp32 LoRA, SDPA",
        unet,
        params,
        x0,
        emb,
        is_prior,
        notes=f"LoRA dtype {','.join(dtypes)}; {sum(p.numel() for p in params) / 1e6:.2f}M trainable",
    )
    if b.left() > 60:
        set_attention(unet, "classic")
        run("bf16 base, classic attn (AttnAddedKVProcessor)", unet, params, x0, emb, is_prior, notes="no SDPA")
        set_attention(unet, "sdpa")
    if b.left() > 60:
        unet.to(memory_format=torch.channels_last)
        run("bf16 base, SDPA, channels_last", unet, params, x0, emb, is_prior, channels_last=True)
        unet.to(memory_format=torch.contiguous_format)
    if b.left() > 60:
        unet.enable_gradient_checkpointing()
        run(
            "bf16 base, SDPA, grad checkpointing",
            unet,
            params,
            x0,
            emb,
            is_prior,
            ckpt_of=("bf16 base + fp32 LoRA, SDPA", x0.shape[0]),
            notes="FLOPs of the non-ckpt step",
        )
        unet.disable_gradient_checkpointing()
    for nb in a.big_batches:
        if b.left() < 60:
            break
        xb, eb, pb = make_batch(b, nb, 64, seed=nb)
        run(f"bf16 base, SDPA, {nb}+{nb}", unet, params, xb, eb, pb)
        del xb, eb, pb
    # UNet forward+backward alone (no loss/scheduler/optimizer): where the step's time goes
    if b.left() > 60:
        b.reset_mem()
        t_in = torch.randint(0, 1000, (x0.shape[0],), device=b.dev)

        def fwd_bwd(unet=unet):
            with b.autocast():
                out = unet(x0, t_in, encoder_hidden_states=emb, return_dict=False)[0]
            out.float().square().mean().backward()

        try:
            fl = b.count_flops(fwd_bwd)
            t, times, _ = b.time_it(fwd_bwd, a.warmup, a.steps)
            b.add(
                "lora",
                "bf16 base, UNet fwd+bwd only (no loss/opt)",
                samples=x0.shape[0],
                time_s=t,
                times=times,
                peak_gb=b.peak_gb(),
                flops=fl,
                notes="diagnostic",
            )
        except Exception as err:  # noqa: BLE001
            b.add("lora", "UNet fwd+bwd only", notes=f"ERROR {err}"[:300])
        for p in params:
            p.grad = None
    del unet, params
    b.reset_mem()
    return base_flops


def full_section(b: Bench):
    """Full fine-tune of every UNet weight: which optimiser/precision option fits in < 48 GB."""
    a = b.args
    sched = ddpm_scheduler()
    x0, emb, is_prior = make_batch(b, a.batch, 64)
    flops = {}
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    b.env["bitsandbytes"] = has_bnb

    def run(name, unet, make_opt, in_backward=False, ckpt=False, notes=""):
        params = [p for p in unet.parameters() if p.requires_grad]
        hooks, opt = [], None
        if ckpt:
            unet.enable_gradient_checkpointing()
        b.reset_mem()
        try:
            if in_backward:  # optimiser step inside backward: each gradient is used and freed at once
                opts = {p: make_opt([p]) for p in params}

                def hook(p):
                    opts[p].step()
                    p.grad = None

                hooks = [p.register_post_accumulate_grad_hook(hook) for p in params]
                opt = NoStepOptimizer()
            else:
                opt = make_opt(params)
            step = train_step_fn(b, unet, opt, sched, x0, emb, is_prior, torch.Generator().manual_seed(2))
            counted = measure_full_row(b, name, step, params, x0.shape[0], flops.get("base"), notes, count=not ckpt)
            if not ckpt:
                flops["base"] = counted
        except Exception as err:  # noqa: BLE001
            b.add("full", name, samples=x0.shape[0], peak_gb=b.peak_gb(),
                  notes=failure_note(err, oom="OOM (peak before failure shown)"))
        finally:
            for h in hooks:
                h.remove()
            del opt
            for p in params:
                p.grad = None
            if ckpt:
                unet.disable_gradient_checkpointing()
            b.reset_mem()

    lr = a.full_lr
    adafactor = lambda ps: torch.optim.Adafactor(ps, lr=lr, foreach=True)  # noqa: E731
    adafactor1 = lambda ps: torch.optim.Adafactor(ps, lr=lr, foreach=False)  # noqa: E731
    adamw = lambda ps: fused_adamw(ps, lr, b.dev)  # noqa: E731

    b.reset_mem()
    unet = build_unet(a.model, torch.float32, b.dev)
    unet.requires_grad_(True)
    unet.train()
    plan = [
        ("fp32 weights + Adafactor (factored, fp32)", dict(make_opt=adafactor), "fp32 master = the weights"),
        ("fp32 weights + Adafactor + grad ckpt", dict(make_opt=adafactor, ckpt=True), "fp32"),
        (
            "fp32 weights + Adafactor in backward + grad ckpt",
            dict(make_opt=adafactor1, in_backward=True, ckpt=True),
            "fp32; grads freed per parameter",
        ),
        (
            "fp32 weights + AdamW in backward + grad ckpt",
            dict(make_opt=adamw, in_backward=True, ckpt=True),
            "fp32; AdamW states fp32",
        ),
        ("fp32 weights + AdamW (fused) + autocast", dict(make_opt=adamw), "fp32; classic mixed precision"),
    ]
    for name, kw, notes in plan:
        if b.left() < 45:
            b.add("full", name, notes="skipped: time budget")
            continue
        run(name, unet, notes=notes, **kw)
    if b.left() > 45:
        unet.to(b.lowp)
        run("pure bf16 weights + AdamW (bf16 states)", unet, adamw, notes="bf16 weights: tiny updates round away")
    if b.left() > 45:
        run("pure bf16 weights + AdamW + grad ckpt", unet, adamw, ckpt=True, notes="bf16")
    if not has_bnb:
        b.add("full", "8-bit AdamW (bitsandbytes)", notes="not measured: bitsandbytes not installed on the device")
    del unet
    b.reset_mem()


def sr_section(b: Bench):
    a = b.args
    from diffusers import DDPMScheduler

    sched = ddpm_scheduler()
    noising = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    b.reset_mem()
    unet = build_unet(a.sr_model, b.lowp, b.dev)
    params = add_lora(unet, a.rank)
    unet.train()
    flops = {}
    for nb, cl in [(1, False), (1, True), (4, False)]:
        if b.left() < 45:
            break
        x0, emb, is_prior = make_batch(b, nb, 256, seed=10 + nb)
        g = torch.Generator().manual_seed(3)
        low = (torch.rand(x0.shape[0], 3, 64, 64, generator=g) * 2 - 1).to(b.dev)
        gen = torch.Generator().manual_seed(4)

        def cond_fn(low=low, gen=gen):
            return sr_condition(low, 256, 100, noising, gen)

        if cl:
            unet.to(memory_format=torch.channels_last)
        opt = fused_adamw(params, a.lr, b.dev)
        step = train_step_fn(b, unet, opt, sched, x0, emb, is_prior, gen, cond_fn=cond_fn, channels_last=cl)
        name = f"IF-II LoRA bf16, SDPA{', channels_last' if cl else ''}"
        b.reset_mem()
        try:
            before = snapshot(params)
            first = step()
            ok = bool(torch.isfinite(first).item())
            moved = changed_fraction(before)
            if nb not in flops:
                flops[nb] = b.count_flops(step)
            t, times, loss = b.time_it(step, a.warmup, a.steps)
            b.add(
                "sr",
                name,
                samples=x0.shape[0],
                time_s=t,
                times=times,
                peak_gb=b.peak_gb(),
                flops=flops[nb],
                loss=float(loss),
                loss_finite=ok,
                trainable_changed_frac=moved,
                notes=f"{a.sr_model} 256 px, 6-ch input, noise_level 100; loss ok={ok}, params moved={moved:.2f}",
            )
        except Exception as err:  # noqa: BLE001
            b.add("sr", name, samples=x0.shape[0], notes=failure_note(err))
        finally:
            if cl:
                unet.to(memory_format=torch.contiguous_format)
            del opt
            for p in params:
                p.grad = None
            b.reset_mem()
    del unet, params
    b.reset_mem()


# ------------------------------------------------------------------------------------------ sampling
def gen_section(b: Bench):
    """Class-image generation: DPM-Solver++ from IF's scheduler config, CFG 7, the IFPipeline loop."""
    a = b.args
    from diffusers import DPMSolverMultistepScheduler

    from cascade_booth.tiny import if_scheduler

    sched = DPMSolverMultistepScheduler.from_config(if_scheduler(1.5).config)
    b.env["gen_scheduler"] = {
        k: sched.config[k]
        for k in ("algorithm_type", "variance_type", "thresholding", "sample_max_value", "dynamic_thresholding_ratio")
    }
    b.reset_mem()
    unet = build_unet(a.model, b.lowp, b.dev)
    unet.eval()
    n, steps, w = a.gen_batch, a.gen_steps, 7.0
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(n, 77, 4096, generator=g).to(b.dev, b.lowp)
    uncond = torch.randn(n, 77, 4096, generator=g).to(b.dev, b.lowp)
    embeds = torch.cat([uncond, cond])

    def sample(channels_last=False, unet=unet):
        sched.set_timesteps(steps, device=b.dev)
        x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(6)).to(b.dev)
        with torch.inference_mode():
            for t in sched.timesteps:
                model_in = sched.scale_model_input(torch.cat([x, x]), t).to(b.lowp)
                if channels_last:
                    model_in = model_in.contiguous(memory_format=torch.channels_last)
                out = unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0].float()
                out_uncond, out_text = out.chunk(2)
                eps_uncond, _ = out_uncond.split(3, dim=1)
                eps_text, var = out_text.split(3, dim=1)
                pred = torch.cat([eps_uncond + w * (eps_text - eps_uncond), var], dim=1)
                x = sched.step(pred, t, x, return_dict=False)[0]
        return x

    t_one = torch.full((), 500, device=b.dev)
    x_probe = torch.randn(2 * n, 3, 64, 64, device=b.dev, dtype=b.lowp)
    with torch.inference_mode():
        fl_one = b.count_flops(lambda u=unet: u(x_probe, t_one, encoder_hidden_states=embeds, return_dict=False))
    for cl in (False, True):
        if b.left() < 40:
            break
        if cl:
            unet.to(memory_format=torch.channels_last)
        b.reset_mem()
        try:
            t, times, x = b.time_it(lambda cl=cl: sample(cl), 1, 3)
            finite = bool(torch.isfinite(x).all())
            b.add(
                "gen",
                f"{a.model} DPM++ {steps} steps, CFG {w:g}{', channels_last' if cl else ''}",
                samples=n,
                time_s=t,
                times=times,
                peak_gb=b.peak_gb(),
                flops=fl_one * steps,
                images_per_s=n / t,
                finite=finite,
                notes=f"{n / t:.2f} images/s; UNet batch {2 * n}; {str(b.lowp)[6:]} weights; output finite={finite}; "
                "time per generated batch",
            )
        except Exception as err:  # noqa: BLE001
            b.add("gen", "sampling", notes=failure_note(err))
        if cl:
            unet.to(memory_format=torch.contiguous_format)
    del unet
    b.reset_mem()


def compile_section(b: Bench, base_flops):
    """torch.compile of the UNet inside the unchanged training step (loss, scheduler, optimiser eager)."""
    a = b.args
    sched = ddpm_scheduler()
    variants = a.compile_variants or [
        ("default", a.batch, False), ("reduce-overhead", a.batch, False), ("default", a.big_batches[0], True)
    ]
    flops = {}
    for mode, nb, cl in variants:
        if b.left() < a.compile_min_s:
            b.add("lora", f"torch.compile mode={mode}, {nb}+{nb}", notes="skipped: time budget")
            continue
        torch._dynamo.reset()
        x0, emb, is_prior = make_batch(b, nb, 64, seed=nb)
        b.reset_mem()
        unet = build_unet(a.model, b.lowp, b.dev)
        params = add_lora(unet, a.rank)
        unet.train()
        if cl:
            unet.to(memory_format=torch.channels_last)
        opt = fused_adamw(params, a.lr, b.dev)
        gen = torch.Generator().manual_seed(1)
        if nb not in flops:
            flops[nb] = (
                base_flops
                if (nb == a.batch and base_flops)
                else b.count_flops(train_step_fn(b, unet, opt, sched, x0, emb, is_prior, gen))
            )
        cunet = torch.compile(unet, mode=mode)
        inner = train_step_fn(b, cunet, opt, sched, x0, emb, is_prior, gen, channels_last=cl)

        def step(inner=inner, mode=mode):
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            return inner()

        name = f"bf16 base, SDPA, torch.compile mode={mode}{', channels_last' if cl else ''}, {nb}+{nb}"
        try:
            t0 = time.perf_counter()
            first = step()
            b.sync()
            compile_s = time.perf_counter() - t0
            ok = bool(torch.isfinite(first).item())
            t, times, loss = b.time_it(step, a.warmup, a.steps)
            b.add(
                "lora",
                name,
                samples=x0.shape[0],
                time_s=t,
                times=times,
                peak_gb=b.peak_gb(),
                flops=flops[nb],
                loss=float(loss),
                compile_s=compile_s,
                notes=f"first step (compile) {compile_s:.0f} s; loss ok={ok}; FLOPs of the eager step",
            )
        except Exception as err:  # noqa: BLE001
            b.add("lora", name, notes=failure_note(err))
        finally:
            del unet, cunet, params, opt, inner, step
            b.reset_mem()


def fullx_section(b: Bench):
    """Full fine-tune with fp32 weights and bf16 AdamW moments, updated inside backward: the package's
    ``adamw-in-backward`` optimizer (``cascade_booth.optim.InBackwardAdamW``), as the trainer runs it."""
    from cascade_booth.optim import InBackwardAdamW

    a = b.args
    sched = ddpm_scheduler()
    x0, emb, is_prior = make_batch(b, a.batch, 64)
    b.reset_mem()
    unet = build_unet(a.model, torch.float32, b.dev)
    unet.requires_grad_(True)
    unet.train()
    params = list(unet.parameters())

    fl = None
    for ckpt in (False, True):
        if b.left() < 45:
            break
        if ckpt:
            unet.enable_gradient_checkpointing()
        opt = InBackwardAdamW(params, lr=a.full_lr)  # step() commits the count; the hooks update the weights
        opt.attach()
        b.reset_mem()
        name = f"fp32 weights + AdamW (bf16 m,v) in backward{' + grad ckpt' if ckpt else ''}"
        try:
            step = train_step_fn(b, unet, opt, sched, x0, emb, is_prior, torch.Generator().manual_seed(2))
            counted = measure_full_row(b, name, step, params, x0.shape[0], fl, "fp32 weights, m/v bf16",
                                       count=not ckpt)
            if not ckpt:
                fl = counted
        except Exception as err:  # noqa: BLE001
            b.add("full", name, samples=x0.shape[0], peak_gb=b.peak_gb(), notes=failure_note(err))
        finally:
            opt.detach()
            opt.state.clear()
            for p in params:
                p.grad = None
            if ckpt:
                unet.disable_gradient_checkpointing()
            b.reset_mem()
    del unet, params
    b.reset_mem()


# ----------------------------------------------------------------------------------------------- main
def measure_peak(b: Bench) -> float:
    n = 8192 if b.cuda else 1024
    g = torch.Generator(device=b.dev).manual_seed(0) if b.cuda else torch.Generator().manual_seed(0)
    x = torch.randn(n, n, device=b.dev, dtype=torch.bfloat16, generator=g)
    y = torch.randn(n, n, device=b.dev, dtype=torch.bfloat16, generator=g)
    t, _, _ = b.time_it(lambda x=x, y=y: x @ y, 3, 20 if b.cuda else 3)
    del x, y
    return 2 * n**3 / t


def parse_variant(text: str) -> tuple[str, int, bool]:
    """``MODE:N[:cl]`` -> (compile mode, instance samples, channels_last)."""
    parts = text.split(":")
    return parts[0], int(parts[1]), len(parts) > 2 and parts[2] == "cl"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="IF-I-XL-v1.0")
    p.add_argument("--sr-model", default=None, help="default IF-II-L-v1.0 (cpu-sr on --device cpu)")
    p.add_argument("--sections", default="lora,full,fullx,sr,gen", help="comma list of lora,full,fullx,sr,gen,compile")
    p.add_argument(
        "--compile-min-s", type=float, default=150, help="start a compile row only with this much budget left"
    )
    p.add_argument("--compile-variants", default="",
                   help="compile rows as MODE:N[:cl], comma separated (e.g. default:8,default:16:cl); "
                        "default: default:BATCH, reduce-overhead:BATCH, default:BIG[0]:cl")
    p.add_argument("--batch", type=int, default=2, help="instance images per step (same number of class images)")
    p.add_argument("--big-batches", default="8,16", help="larger instance counts to show MFU scaling")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--full-lr", type=float, default=1e-7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--gen-steps", type=int, default=25)
    p.add_argument("--amp", choices=["bf16", "none"], default=None, help="default bf16 (none on --device cpu)")
    p.add_argument("--budget-s", type=float, default=520, help="skip work that would start after this")
    a = p.parse_args(argv)
    on_cpu = torch.device(a.device).type == "cpu"
    a.sr_model = a.sr_model or ("cpu-sr" if on_cpu else "IF-II-L-v1.0")
    a.amp = a.amp or ("none" if on_cpu else "bf16")
    a.model, a.sr_model = resolve(a.model), resolve(a.sr_model)
    a.big_batches = [int(x) for x in a.big_batches.split(",") if x]
    a.compile_variants = [parse_variant(v) for v in a.compile_variants.split(",") if v]
    b = Bench(a)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import diffusers
    import peft

    b.env = dict(
        device=torch.cuda.get_device_name() if b.cuda else "cpu",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        diffusers=diffusers.__version__,
        peft=peft.__version__,
        model=a.model,
        model_params=param_count(a.model),
        sr_model=a.sr_model,
        sr_params=param_count(a.sr_model),
        args=vars(a),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    if b.cuda:
        props = torch.cuda.get_device_properties(0)
        b.env.update(sms=props.multi_processor_count, mem_gib=props.total_memory / GB)
    print("ENV " + json.dumps(b.env, default=str), flush=True)
    b.peak_flops = measure_peak(b)
    b.env["bf16_matmul_peak_tflops"] = b.peak_flops / 1e12
    print(f"bf16 matmul peak (measured): {b.peak_flops / 1e12:.0f} TFLOP/s", flush=True)
    sections = a.sections.split(",")
    base_flops = None
    for name in ("lora", "full", "fullx", "sr", "gen", "compile"):
        if name not in sections:
            continue
        if b.left() < 40:
            b.add(name, "(section skipped)", notes=f"time budget: {b.elapsed():.0f} s used")
            continue
        print(f"--- section {name} at {b.elapsed():.0f} s", flush=True)
        t = time.perf_counter()
        if name == "lora":
            base_flops = lora_section(b)
        elif name == "full":
            full_section(b)
        elif name == "fullx":
            fullx_section(b)
        elif name == "sr":
            sr_section(b)
        elif name == "gen":
            gen_section(b)
        elif name == "compile":
            compile_section(b, base_flops)
        print(f"--- section {name} took {time.perf_counter() - t:.0f} s", flush=True)
    b.env["total_s"] = b.elapsed()
    b.save()
    print()
    print(
        f"device {b.env['device']} | torch {b.env['torch']} | diffusers {b.env['diffusers']} | "
        f"matmul peak {b.peak_flops / 1e12:.0f} TFLOP/s | {b.elapsed():.0f} s"
    )
    print(b.table())


if __name__ == "__main__":
    main()
