"""How one step's gradients are applied, chosen once per run by :func:`make_update`.

Four ways, one ``apply(loss)`` each: torch's optimizer after backward (``Update``), the same behind fp16's
grad scaler (``ScaledUpdate``), a DeepSpeed engine that stepped inside backward (``DeepSpeedUpdate``) and
AdamW applied inside backward (``InBackwardUpdate``, :mod:`cascade_booth.optim`). ``apply`` zeroes the
gradients in every case and returns why nothing was applied (None if it was); the trainer counts the skips.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from cascade_booth.optim import InBackwardAdamW

if TYPE_CHECKING:
    from accelerate import Accelerator


class Update:
    """torch's optimizer after backward: clip the global norm, then step, unless the loss or the norm is not finite.

    ``loss`` is the step's mean over micro-batches and processes, the same on every process, so all skip together.
    """

    def __init__(self, acc: Accelerator, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
                 max_grad_norm: float):
        self.acc, self.optimizer, self.params = acc, optimizer, params
        self.max_norm = max_grad_norm if max_grad_norm > 0 else math.inf  # inf: the norm is still checked

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.acc.autocast()

    def apply(self, loss: float) -> str | None:
        problem = None if math.isfinite(loss) else "non-finite loss"
        if problem is None:
            norm = self.acc.clip_grad_norm_(self.params, self.max_norm)  # a tensor; DeepSpeed: the engine's float
            if norm is not None and not bool(torch.isfinite(torch.as_tensor(norm))):
                problem = "non-finite gradients"
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return problem


class ScaledUpdate(Update):
    """fp16 on a GPU: accelerate's grad scaler skips an overflowing step itself (and lowers its scale by design)."""

    def apply(self, loss: float) -> str | None:
        problem = None if math.isfinite(loss) else "non-finite loss"
        if problem is None:
            self.acc.clip_grad_norm_(self.params, self.max_norm)  # unscales the gradients first
            scaler = self.acc.scaler
            scale = scaler.get_scale()
            self.optimizer.step()  # a fused AdamW skips inside its kernel: only the lowered scale tells
            if self.optimizer.step_was_skipped or scaler.get_scale() < scale:
                problem = "fp16 gradient overflow (scaler)"
        self.optimizer.zero_grad(set_to_none=True)
        return problem


class DeepSpeedUpdate(Update):
    """The engine clipped and stepped inside ``acc.backward`` (accelerate's ``optimizer.step`` is a no-op here).

    Its bf16/fp16 engine holds the UNet in that dtype and accelerate autocasts nothing under DeepSpeed, so the
    fp32 batches are autocast to the engine's dtype.
    """

    def __init__(self, acc: Accelerator, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
                 max_grad_norm: float, engine: Any):
        super().__init__(acc, optimizer, params, max_grad_norm)
        self.dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float16 if engine.fp16_enabled() else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.acc.device.type, dtype=self.dtype)


class InBackwardUpdate(Update):
    """``adamw-in-backward``: the hooks already updated every parameter whose gradient was finite.

    ``optimizer.step`` only commits the step count. Nothing to clip: the config refuses max_grad_norm > 0.
    """

    def __init__(self, acc: Accelerator, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
                 in_backward: InBackwardAdamW):
        super().__init__(acc, optimizer, params, 0.0)
        self.in_backward = in_backward
        in_backward.attach()  # after accelerate's prepare: the hooks must see the parameters on their device

    def apply(self, loss: float) -> str | None:
        bad_gradients = self.in_backward.nonfinite_step()  # read every step: reading it also resets it
        problem = "non-finite loss" if not math.isfinite(loss) else "non-finite gradients" if bad_gradients else None
        if problem is None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return problem


def make_update(acc: Accelerator, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                params: Sequence[torch.nn.Parameter], max_grad_norm: float) -> Update:
    """The way this run applies its gradients, from the ``unet`` and ``optimizer`` accelerate prepared."""
    from accelerate.utils import DistributedType

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the optimizer it was given
    if isinstance(inner, InBackwardAdamW):
        return InBackwardUpdate(acc, optimizer, params, inner)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return DeepSpeedUpdate(acc, optimizer, params, max_grad_norm, engine=unet)
    if acc.scaler is not None:
        return ScaledUpdate(acc, optimizer, params, max_grad_norm)
    return Update(acc, optimizer, params, max_grad_norm)
