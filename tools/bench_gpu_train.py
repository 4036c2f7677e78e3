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
    changed_fraction,
    ddpm_scheduler,
    failure_note,
    fused_adamw,
    make_batch,
    measure_full_row,
    set_attention,
    snapshot,
    train_step_fn,
)
from if_configs import build_unet

from cascade_booth.lora import add_lora


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
