"""The shipped trainer (``cascade_booth.trainer.train``) on a real IF architecture: step time and peak memory.

``tools/bench_gpu.py`` times hand-written steps to find the levers; this script checks that the
trainer a user runs gets them: accelerate's mixed precision, the configured optimizer (AdamW, or
``adamw-in-backward``), gradient checkpointing, ``torch.compile``, and the prior-preservation batch.
The UNet has random weights built from the published config (``tools/if_configs.py``); batches are
random images and random [B, 77, 4096] T5 states, fixed per step index, so nothing is downloaded::

    python tools/bench_trainer.py --model IF-I-XL-v1.0 --full --optimizer adamw-in-backward \\
        --max-grad-norm 0 --gradient-checkpointing --batch 2 --steps 6

Per-step times come from the trainer's own ``on_step`` callback (the loss is read back to the host
inside the step, so each step has finished on the GPU when it fires); the first ``--warmup`` steps are
left out. Peak memory is ``torch.cuda.max_memory_allocated()`` over the whole run, model build excluded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from if_configs import build_unet, param_count, resolve  # a sibling: the script's folder is first on sys.path

from cascade_booth.config import StageConfig
from cascade_booth.config_checks import OPTIMIZERS, validate
from cascade_booth.diffusion import training_losses
from cascade_booth.lora import add_lora
from cascade_booth.trainer import Batch, Callbacks, train

GIB = 2**30


class RandomJob:
    """A stage-one job on random data: ``batch`` instance + ``batch`` class samples per step."""

    name = "base"
    prior_weight = 1.0
    extras: dict = {}  # the UNet alone (no identifier offset: trainer.Extra)

    def __init__(self, unet: torch.nn.Module, params: list, batch: int, device: torch.device):
        from diffusers import DDPMScheduler

        self.unet, self.params, self.n, self.device = unet, params, batch, device
        self._batches: dict[int, Batch] = {}
        self.scheduler = DDPMScheduler(variance_type="learned_range", beta_schedule="squaredcos_cap_v2")

    def batch(self, index: int, generator: torch.Generator) -> Batch:
        # Made once on the device and reused: drawing 2*B x 77 x 4096 normals on the CPU every step would
        # time this script's data, not the trainer (a stage's text states are precomputed and cached).
        key = index % 4
        if key not in self._batches:
            g = torch.Generator().manual_seed(key)
            n = 2 * self.n
            x0 = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1
            text = torch.randn(n, 77, 4096, generator=g)
            is_prior = torch.tensor([False] * self.n + [True] * self.n)
            self._batches[key] = Batch(x0.to(self.device), text.to(self.device), is_prior.to(self.device))
        return self._batches[key]

    def losses(self, unet: torch.nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        return training_losses(unet, self.scheduler, batch.x0, batch.text, generator, variance="learned")


def stage_config(a: argparse.Namespace) -> StageConfig:
    cfg = StageConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, full=a.full, lora_rank=a.rank,
                      optimizer=a.optimizer, max_grad_norm=a.max_grad_norm, mixed_precision=a.mixed_precision,
                      gradient_checkpointing=a.gradient_checkpointing, compile=a.compile, checkpoint_every=0)
    from cascade_booth.config import Config

    validate(Config(base=cfg), "bench settings")
    return cfg


def build_job(a: argparse.Namespace, device: torch.device) -> RandomJob:
    # LoRA under bf16: a frozen bf16 base and an fp32 adapter, as the stages load it on CUDA
    weights_dtype = torch.bfloat16 if not a.full and a.mixed_precision == "bf16" else torch.float32
    unet = build_unet(a.model, weights_dtype, device)
    if a.full:
        unet.requires_grad_(True)
        params = list(unet.parameters())
    else:
        params = add_lora(unet, a.rank)
    unet.train()
    return RandomJob(unet, params, a.batch, device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="IF-I-XL-v1.0")
    p.add_argument("--full", action="store_true")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=2, help="instance samples per step (as many class samples)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-7)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    a.model = resolve(a.model)
    cfg = stage_config(a)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    job = build_job(a, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    losses: list[float] = []

    def on_step(step: int, loss: float, lr: float) -> None:
        stamps.append(time.perf_counter())
        losses.append(loss)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        train(job, cfg, Path(root), seed=0, resume=False, cb=Callbacks(on_step=on_step))
    times = [t1 - t0 for t0, t1 in zip([start, *stamps], stamps, strict=False)]
    steps = times[a.warmup:]
    cuda = device.type == "cuda"
    result = {
        "model": a.model, "params": param_count(a.model), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "settings": {k: str(v) for k, v in vars(a).items()}, "samples_per_step": 2 * a.batch,
        "ms_per_step_median": 1000 * statistics.median(steps) if steps else None,
        "ms_per_step": [round(1000 * s, 1) for s in steps], "first_step_s": round(times[0], 2),
        "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "losses": losses, "all_losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
    }
    print("RESULT " + json.dumps(result), flush=True)
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
