"""Optimizers for the trainer: torch's AdamW, or AdamW applied inside backward for full fine-tunes.

``adamw-in-backward`` is what lets a full fine-tune of IF-I-XL (4.3B parameters, fp32 weights) fit in
< 48 GB: each parameter is updated the moment its gradient has been accumulated and the gradient is
freed at once, so the 17 GB of fp32 gradients never exist together; the two moments are stored in bf16
(half of fp32's 34 GB). The arithmetic is fp32 on fp32 weights, so small updates are not rounded away
as they are with bf16 weights (tools/gpu-results.md, section 2, measured 43.4 GiB with gradient
checkpointing).

What it gives up, checked by the config: global gradient-norm clipping (the gradients never coexist),
gradient accumulation and several processes (an update inside backward would run before the
accumulation or the all-reduce has finished), and fp16 (no grad scaler can unscale inside a hook).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch


class OptimizerSettings(Protocol):
    """What :func:`in_backward_problems` reads of a stage's config (``config.StageConfig``, which imports this)."""

    optimizer: str
    gradient_accumulation: int
    max_grad_norm: float
    mixed_precision: str


class InBackwardAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose update runs in a post-accumulate-grad hook per parameter.

    ``step()`` only commits the step count: the weights were already updated during backward. A
    parameter whose gradient is not finite is left unchanged (its moments too) and flags the step
    (:attr:`found_nonfinite`); the trainer then reports the step as skipped.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, state_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "step_count": 0})
        self.state_dtype = state_dtype
        self.found_nonfinite: torch.Tensor | None = None
        self._hooks: list[Any] = []

    def attach(self) -> None:
        """Register the hooks (after the model is on its device, so they see the final parameters)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._hooks.append(p.register_post_accumulate_grad_hook(lambda p, g=group: self._update(p, g)))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @torch.no_grad()
    def _update(self, p: torch.nn.Parameter, group: dict) -> None:
        b1, b2 = group["betas"]
        t = group["step_count"] + 1
        st = self.state[p]
        if not st:
            st["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype)
        g = p.grad.float()
        ok = torch.isfinite(g).all()  # stays on the device: no sync per parameter
        self.found_nonfinite = ~ok if self.found_nonfinite is None else self.found_nonfinite | ~ok
        # Fresh fp32 copies (``.float()`` would alias fp32 tensors), so a rejected update changes nothing.
        m = st["exp_avg"].to(torch.float32, copy=True).mul_(b1).add_(g, alpha=1 - b1)
        v = st["exp_avg_sq"].to(torch.float32, copy=True).mul_(b2).addcmul_(g, g, value=1 - b2)
        new_p = p.to(torch.float32, copy=True).mul_(1 - group["lr"] * group["weight_decay"])
        denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        new_p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** t))
        st["exp_avg"].copy_(torch.where(ok, m, st["exp_avg"]))
        st["exp_avg_sq"].copy_(torch.where(ok, v, st["exp_avg_sq"]))
        p.copy_(torch.where(ok, new_p, p))
        p.grad = None  # the point of the exercise: this gradient's memory is free again

    def nonfinite_step(self) -> bool:
        """Whether any gradient of the current step was not finite (one host sync), then reset."""
        found = self.found_nonfinite
        self.found_nonfinite = None
        return bool(found) if found is not None else False

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ARG002 - the update already happened inside backward
        for group in self.param_groups:
            group["step_count"] += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:  # gradients are freed by the hooks; this clears any stragglers
            for p in group["params"]:
                p.grad = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy moments into bf16 buffers in place: torch's loader would first cast them to the fp32 weights'
        dtype, which for IF-I-XL means 34 GB of transient copies."""
        params = [p for group in self.param_groups for p in group["params"]]
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
            group["betas"] = tuple(group["betas"])
        for idx, slots in state_dict["state"].items():
            p = params[int(idx)]
            self.state[p] = {k: v.to(device=p.device, dtype=self.state_dtype) for k, v in slots.items()}


def make_optimizer(name: str, params: Sequence[torch.nn.Parameter] | list[dict], lr: float, device: torch.device
                   ) -> torch.optim.Optimizer:
    """The optimizer a stage config names, over parameters or param groups (a group's ``lr`` wins over ``lr``);
    AdamW is fused on CUDA (one kernel for all tensors)."""
    if name == "adamw-in-backward":
        return InBackwardAdamW(params, lr=lr, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=device.type == "cuda")


def in_backward_problems(stage: OptimizerSettings, processes: int) -> list[str]:
    """Settings that cannot work with an update inside backward (see the module docstring)."""
    if stage.optimizer != "adamw-in-backward":
        return []
    problems = []
    if stage.gradient_accumulation != 1:
        problems.append("optimizer 'adamw-in-backward' needs gradient_accumulation = 1")
    if stage.max_grad_norm > 0:
        problems.append("optimizer 'adamw-in-backward' cannot clip the global gradient norm "
                        "(the gradients never exist together): set max_grad_norm = 0")
    if stage.mixed_precision == "fp16":
        problems.append("optimizer 'adamw-in-backward' does not support fp16 (no grad scaler): use bf16")
    if processes > 1:  # its update would run before DDP's all-reduce of the gradient
        problems.append("optimizer 'adamw-in-backward' works in one process only; use adamw "
                        "(with DeepSpeed ZeRO for memory) when training on several processes")
    return problems
