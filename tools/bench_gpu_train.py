"""Training sections of ``tools/bench_gpu.py``: ``lora`` (IF-I stage-one LoRA step with prior batch, one row per
lever: weight dtype, attention processor, channels_last, gradient checkpointing, batch size), ``full`` (full
fine-tune memory under each optimiser / precision / checkpointing option) and ``fullx`` (fp32 weights with bf16
AdamW moments updated inside backward, the package's ``InBackwardAdamW``). Each takes the run's ``Bench`` and adds
its rows to it; run them through ``python tools/bench_gpu.py --sections lora,full,fullx``.
"""

from __future__ import annotations

import torch
from bench_gpu_common import (  # siblings: the script's folder is first on sys.path
    Bench,
    NoStepOptimizer,
    StepRows,
    ddpm_scheduler,
    failure_note,
    fused_adamw,
    make_batch,
    measure_full_row,
    set_attention,
    train_step_fn,
)
from if_configs import build_unet

from cascade_booth.lora import add_lora


def _lora_unet(b: Bench, dtype: torch.dtype):
    b.reset_mem()
    unet = build_unet(b.args.model, dtype, b.dev)
    params = add_lora(unet, b.args.rank)
    unet.train()
    return unet, params


def lora_section(b: Bench):
    rows, batch = StepRows(b, "lora"), make_batch(b, b.args.batch, 64)
    # fp32 frozen base + bf16 autocast (the CPU trainer path and the "no cast" baseline)
    unet, params = _lora_unet(b, torch.float32)
    rows.run("fp32 base + autocast, SDPA", unet, params, batch, notes="fp32 weights")
    del unet, params
    # bf16 frozen base, fp32 LoRA master weights: the trainer's CUDA path (stages/common.load_unet)
    unet, params = _lora_unet(b, b.lowp)
    dtypes = ",".join(sorted({str(p.dtype) for p in params}))
    base_flops = rows.run("bf16 base + fp32 LoRA, SDPA", unet, params, batch,
                          notes=f"LoRA dtype {dtypes}; {sum(p.numel() for p in params) / 1e6:.2f}M trainable")
    _lora_levers(b, rows, unet, params, batch)
    _unet_only_row(b, unet, params, batch)
    del unet, params
    b.reset_mem()
    return base_flops


def _lora_levers(b: Bench, rows: StepRows, unet, params, batch) -> None:
    """One row per lever on the bf16 step, each undone after its row: attention, layout, checkpointing, batch."""
    if b.left() > 60:
        set_attention(unet, "classic")
        rows.run("bf16 base, classic attn (AttnAddedKVProcessor)", unet, params, batch, notes="no SDPA")
        set_attention(unet, "sdpa")
    if b.left() > 60:
        unet.to(memory_format=torch.channels_last)
        rows.run("bf16 base, SDPA, channels_last", unet, params, batch, channels_last=True)
        unet.to(memory_format=torch.contiguous_format)
    if b.left() > 60:
        unet.enable_gradient_checkpointing()
        rows.run("bf16 base, SDPA, grad checkpointing", unet, params, batch,
                 flops_key=("bf16 base + fp32 LoRA, SDPA", batch[0].shape[0]), notes="FLOPs of the non-ckpt step")
        unet.disable_gradient_checkpointing()
    for nb in b.args.big_batches:
        if b.left() < 60:
            break
        rows.run(f"bf16 base, SDPA, {nb}+{nb}", unet, params, make_batch(b, nb, 64, seed=nb))


def _unet_only_row(b: Bench, unet, params, batch) -> None:
    """UNet forward + backward alone (no loss, scheduler or optimizer): where the step's time goes."""
    if b.left() <= 60:
        return
    x0, emb, _ = batch
    b.reset_mem()
    t_in = torch.randint(0, 1000, (x0.shape[0],), device=b.dev)

    def fwd_bwd():
        with b.autocast():
            out = unet(x0, t_in, encoder_hidden_states=emb, return_dict=False)[0]
        out.float().square().mean().backward()

    try:
        fl = b.count_flops(fwd_bwd)
        t, times, _ = b.time_it(fwd_bwd, b.args.warmup, b.args.steps)
        b.add("lora", "bf16 base, UNet fwd+bwd only (no loss/opt)", samples=x0.shape[0], time_s=t, times=times,
              peak_gb=b.peak_gb(), flops=fl, notes="diagnostic")
    except Exception as err:  # noqa: BLE001
        b.add("lora", "UNet fwd+bwd only", notes=f"ERROR {err}"[:300])
    for p in params:
        p.grad = None


class _FullRows:
    """Measures one full fine-tune row; the non-checkpointed step's FLOPs stand for every row."""

    def __init__(self, b: Bench):
        self.b, self.sched, self.batch, self.flops = b, ddpm_scheduler(), make_batch(b, b.args.batch, 64), None

    def run(self, name, unet, make_opt, in_backward=False, ckpt=False, notes=""):
        b, (x0, emb, is_prior) = self.b, self.batch
        params = [p for p in unet.parameters() if p.requires_grad]
        hooks, opt = [], None
        if ckpt:
            unet.enable_gradient_checkpointing()
        b.reset_mem()
        try:
            if in_backward:  # optimiser step inside backward: each gradient is used and freed at once
                hooks, opt = _step_in_backward(params, make_opt), NoStepOptimizer()
            else:
                opt = make_opt(params)
            step = train_step_fn(b, unet, opt, self.sched, x0, emb, is_prior, torch.Generator().manual_seed(2))
            counted = measure_full_row(b, name, step, params, x0.shape[0], self.flops, notes, count=not ckpt)
            if not ckpt:
                self.flops = counted
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


def _step_in_backward(params, make_opt) -> list:
    """One optimiser per parameter, stepped by a hook as soon as its gradient is accumulated."""
    opts = {p: make_opt([p]) for p in params}

    def hook(p):
        opts[p].step()
        p.grad = None

    return [p.register_post_accumulate_grad_hook(hook) for p in params]


def full_section(b: Bench):
    """Full fine-tune of every UNet weight: which optimiser/precision option fits in < 48 GB."""
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    b.env["bitsandbytes"] = has_bnb
    rows, lr = _FullRows(b), b.args.full_lr
    adafactor = lambda ps: torch.optim.Adafactor(ps, lr=lr, foreach=True)  # noqa: E731
    adafactor1 = lambda ps: torch.optim.Adafactor(ps, lr=lr, foreach=False)  # noqa: E731
    adamw = lambda ps: fused_adamw(ps, lr, b.dev)  # noqa: E731
    b.reset_mem()
    unet = build_unet(b.args.model, torch.float32, b.dev)
    unet.requires_grad_(True)
    unet.train()
    plan = [
        ("fp32 weights + Adafactor (factored, fp32)", dict(make_opt=adafactor), "fp32 master = the weights"),
        ("fp32 weights + Adafactor + grad ckpt", dict(make_opt=adafactor, ckpt=True), "fp32"),
        ("fp32 weights + Adafactor in backward + grad ckpt", dict(make_opt=adafactor1, in_backward=True, ckpt=True),
         "fp32; grads freed per parameter"),
        ("fp32 weights + AdamW in backward + grad ckpt", dict(make_opt=adamw, in_backward=True, ckpt=True),
         "fp32; AdamW states fp32"),
        ("fp32 weights + AdamW (fused) + autocast", dict(make_opt=adamw), "fp32; classic mixed precision"),
    ]
    for name, kw, notes in plan:
        if b.left() < 45:
            b.add("full", name, notes="skipped: time budget")
            continue
        rows.run(name, unet, notes=notes, **kw)
    if b.left() > 45:
        unet.to(b.lowp)
        rows.run("pure bf16 weights + AdamW (bf16 states)", unet, adamw, notes="bf16 weights: tiny updates round away")
    if b.left() > 45:
        rows.run("pure bf16 weights + AdamW + grad ckpt", unet, adamw, ckpt=True, notes="bf16")
    if not has_bnb:
        b.add("full", "8-bit AdamW (bitsandbytes)", notes="not measured: bitsandbytes not installed on the device")
    del unet
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
