"""Stage-two, sampling and compile sections of ``tools/bench_gpu.py``: ``sr`` (IF-II stage-two LoRA step at 256 px
with the 6-channel low-resolution condition and noise-level class labels), ``gen`` (class-image sampling throughput
with DPM-Solver++ and classifier-free guidance, the IFPipeline loop) and ``compile`` (torch.compile of the UNet
inside the unchanged LoRA training step). Each takes the run's ``Bench`` and adds its rows to it; run them through
``python tools/bench_gpu.py --sections sr,gen,compile``.
"""

from __future__ import annotations

import time

import torch
from bench_gpu_common import (  # siblings: the script's folder is first on sys.path
    Bench,
    StepRows,
    ddpm_scheduler,
    failure_note,
    fused_adamw,
    make_batch,
    train_step_fn,
)
from if_configs import build_unet

from cascade_booth.diffusion import sr_condition
from cascade_booth.lora import add_lora


def sr_section(b: Bench):
    a = b.args
    from diffusers import DDPMScheduler

    noising = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    rows = StepRows(b, "sr")
    b.reset_mem()
    unet = build_unet(a.sr_model, b.lowp, b.dev)
    params = add_lora(unet, a.rank)
    unet.train()
    for nb, cl in [(1, False), (1, True), (4, False)]:
        if b.left() < 45:
            break
        batch = make_batch(b, nb, 256, seed=10 + nb)
        low = (torch.rand(nb * 2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1).to(b.dev)
        gen = torch.Generator().manual_seed(4)

        def cond_fn(low=low, gen=gen):
            return sr_condition(low, 256, 100, noising, gen)

        if cl:
            unet.to(memory_format=torch.channels_last)
        rows.run(f"IF-II LoRA bf16, SDPA{', channels_last' if cl else ''}", unet, params, batch,
                 notes=f"{a.sr_model} 256 px, 6-ch input, noise_level 100", channels_last=cl, flops_key=nb, gen=gen,
                 cond_fn=cond_fn)
        if cl:
            unet.to(memory_format=torch.contiguous_format)
    del unet, params
    b.reset_mem()


# ------------------------------------------------------------------------------------------ sampling
def _ifpipeline_loop(b: Bench, unet, sched, embeds: torch.Tensor, steps: int, guidance: float):
    """The IFPipeline denoising loop with classifier-free guidance (the learned variance taken from the text
    half), batch ``len(embeds) // 2``."""
    n = embeds.shape[0] // 2

    def sample(channels_last=False):
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
                pred = torch.cat([eps_uncond + guidance * (eps_text - eps_uncond), var], dim=1)
                x = sched.step(pred, t, x, return_dict=False)[0]
        return x

    return sample


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
    sample = _ifpipeline_loop(b, unet, sched, embeds, steps, w)
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
            b.add("gen", f"{a.model} DPM++ {steps} steps, CFG {w:g}{', channels_last' if cl else ''}", samples=n,
                  time_s=t, times=times, peak_gb=b.peak_gb(), flops=fl_one * steps, images_per_s=n / t,
                  finite=finite, notes=f"{n / t:.2f} images/s; UNet batch {2 * n}; {str(b.lowp)[6:]} weights; "
                  f"output finite={finite}; time per generated batch")
        except Exception as err:  # noqa: BLE001
            b.add("gen", "sampling", notes=failure_note(err))
        if cl:
            unet.to(memory_format=torch.contiguous_format)
    del unet
    b.reset_mem()


def compile_section(b: Bench, base_flops):
    """torch.compile of the UNet inside the unchanged training step (loss, scheduler, optimiser eager)."""
    a = b.args
    variants = a.compile_variants or [
        ("default", a.batch, False), ("reduce-overhead", a.batch, False), ("default", a.big_batches[0], True)
    ]
    flops = {}
    for mode, nb, cl in variants:
        if b.left() < a.compile_min_s:
            b.add("lora", f"torch.compile mode={mode}, {nb}+{nb}", notes="skipped: time budget")
            continue
        _compile_row(b, mode, nb, cl, flops, base_flops if nb == a.batch else None)
        b.reset_mem()  # after the row's UNet, optimiser and compiled graph went with its frame


def _compile_row(b: Bench, mode: str, nb: int, cl: bool, flops: dict, base_flops) -> None:
    """One compiled-UNet row: the first step's time is the compile time, then the usual timing. The caller
    resets the memory counters once the row's objects are gone."""
    a, sched = b.args, ddpm_scheduler()
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
        flops[nb] = base_flops or b.count_flops(train_step_fn(b, unet, opt, sched, x0, emb, is_prior, gen))
    cunet = torch.compile(unet, mode=mode)
    inner = train_step_fn(b, cunet, opt, sched, x0, emb, is_prior, gen, channels_last=cl)

    def step():
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
        b.add("lora", name, samples=x0.shape[0], time_s=t, times=times, peak_gb=b.peak_gb(), flops=flops[nb],
              loss=float(loss), compile_s=compile_s,
              notes=f"first step (compile) {compile_s:.0f} s; loss ok={ok}; FLOPs of the eager step")
    except Exception as err:  # noqa: BLE001
        b.add("lora", name, notes=failure_note(err))
