"""Where the work runs and in which dtype frozen weights are kept: decided here, once, for every module."""

from __future__ import annotations

import torch


def use_cpu() -> bool:
    """True when no CUDA device is visible: the trainer's accelerator and the process group then use the CPU."""
    return not torch.cuda.is_available()


def device() -> torch.device:
    """This process's device (under a launcher the current CUDA device is its own GPU)."""
    return torch.device("cpu" if use_cpu() else "cuda")


def native_bf16(dev: torch.device | str) -> bool:
    """Whether ``dev`` does bf16 arithmetic in hardware: a CUDA GPU that supports it, an x86 CPU with AVX512-BF16 or
    AMX-BF16, an ARM CPU with BF16. Elsewhere bf16 is emulated and slower than fp32."""
    if torch.device(dev).type == "cuda":
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def compute_precision(setting: str, dev: torch.device | str) -> str:
    """``setting`` ("no", "fp16", "bf16" or "auto") with "auto" resolved on ``dev``: "bf16" where it is native
    (``native_bf16``), else "no" (fp32)."""
    if setting != "auto":
        return setting
    return "bf16" if native_bf16(dev) else "no"


def frozen_dtype(dev: torch.device | str, mixed_precision: str = "bf16") -> torch.dtype:
    """The dtype of weights that are not trained, on ``dev``: ``mixed_precision``'s compute dtype on a GPU, else fp32.

    Frozen models (the T5 encoder, the class-image sampler) run in bf16 on a GPU; a LoRA run's frozen
    base UNet needs no fp32 copy in mixed precision.
    """
    if torch.device(dev).type != "cuda" or mixed_precision == "no":
        return torch.float32
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16
