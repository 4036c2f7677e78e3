"""LoRA adapters on IF UNets via peft, saved in the layout diffusers' ``load_lora_weights`` reads."""

from __future__ import annotations

from pathlib import Path

import torch

# IF's UNets use SimpleCrossAttn blocks (AttnAddedKVProcessor): text keys/values enter through
# add_k_proj / add_v_proj, so they carry adapters too unless ``text=False``: then what a prompt's words mean to
# the UNet is left as it was, and only [V]'s learned offset (identifier_offset) and the queries bind the subject.
IMAGE_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_TARGETS = [*IMAGE_TARGETS, "add_k_proj", "add_v_proj"]
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def add_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None,
             text: bool = True) -> list[torch.nn.Parameter]:
    """Freeze ``unet``, attach a LoRA adapter of ``rank`` (``text``: also on the text keys/values) and return the
    trainable parameters."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
        target_modules=LORA_TARGETS if text else IMAGE_TARGETS,
    )
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # fp32 master weights for the adapter, whatever the frozen base's dtype
        p.data = p.data.float()
    return params


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in peft naming (``lora_A``/``lora_B``), which diffusers' loader reads as-is.

    (diffusers' ``convert_state_dict_to_diffusers`` would rename only some modules to the older
    ``lora.down``/``lora.up`` style, so we keep one consistent naming.)
    """
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def save_lora(unet: torch.nn.Module, folder: Path) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` readable by ``IFPipeline.load_lora_weights``."""
    from diffusers import IFPipeline

    folder.mkdir(parents=True, exist_ok=True)
    layers = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in lora_state_dict(unet).items()}
    IFPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder / LORA_WEIGHTS


def trainable_state(unet: torch.nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold to restore the trained weights: all weights (full) or the adapter."""
    if full:
        return {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    return {n: p.detach().cpu().contiguous() for n, p in unet.named_parameters() if p.requires_grad}


def load_trainable_state(unet: torch.nn.Module, state: dict[str, torch.Tensor], full: bool) -> None:
    if full:
        unet.load_state_dict(state)
        return
    params = dict(unet.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise KeyError(f"checkpoint has parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
