"""Where the work runs and in which dtype frozen weights are kept: decided here, once, for every module."""

from __future__ import annotations

import torch


def use_cpu() -> bool:
    """True when no CUDA device is visible: the trainer's accelerator and the process group then use the CPU."""
    return not torch.cuda.is_available()


def device() -> torch.device:
    """This process's device (under a launcher the current CUDA device is its own GPU)."""
    return torch.device("cpu" if use_cpu() else "cuda")


def frozen_dtype(dev: torch.device | str, mixed_precision: str = "bf16") -> torch.dtype:
    """The dtype of weights that are not trained, on ``dev``: ``mixed_precision``'s compute dtype on a GPU, else fp32.

    Frozen models (the T5 encoder, the class-image sampler) run in bf16 on a GPU; a LoRA run's frozen
    base UNet needs no fp32 copy in mixed precision.
    """
    if torch.device(dev).type != "cuda" or mixed_precision == "no":
        return torch.float32
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16
