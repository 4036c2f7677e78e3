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
import json
import time

import torch

# siblings: the script's folder is first on sys.path
from bench_gpu_common import GB, Bench
from bench_gpu_sample import compile_section, gen_section, sr_section
from bench_gpu_train import full_section, fullx_section, lora_section
from if_configs import param_count, resolve


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


def parse_args(argv=None) -> argparse.Namespace:
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
    return a


def environment(b: Bench) -> dict:
    """What the rows were measured on: device, library versions, the two UNets' sizes, the arguments."""
    import diffusers
    import peft

    a = b.args
    env = dict(
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
        env.update(sms=props.multi_processor_count, mem_gib=props.total_memory / GB)
    return env


def run_sections(b: Bench) -> None:
    base_flops = None
    for name in ("lora", "full", "fullx", "sr", "gen", "compile"):
        if name not in b.args.sections.split(","):
            continue
        if b.left() < 40:
            b.add(name, "(section skipped)", notes=f"time budget: {b.elapsed():.0f} s used")
            continue
        print(f"--- section {name} at {b.elapsed():.0f} s", flush=True)
        t = time.perf_counter()
        if name == "lora":
            base_flops = lora_section(b)
        elif name == "compile":
            compile_section(b, base_flops)
        else:
            {"full": full_section, "fullx": fullx_section, "sr": sr_section, "gen": gen_section}[name](b)
        print(f"--- section {name} took {time.perf_counter() - t:.0f} s", flush=True)


def main(argv=None):
    b = Bench(parse_args(argv))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    b.env = environment(b)
    print("ENV " + json.dumps(b.env, default=str), flush=True)
    b.peak_flops = measure_peak(b)
    b.env["bf16_matmul_peak_tflops"] = b.peak_flops / 1e12
    print(f"bf16 matmul peak (measured): {b.peak_flops / 1e12:.0f} TFLOP/s", flush=True)
    run_sections(b)
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
