"""Sampling loops for both stages, used by the runner, validation images and tests.

Stage two builds its conditioning with ``diffusion.sr_condition``, the very function stage-two
training uses. Classifier-free guidance follows IF's pipelines: guide the epsilon half, keep the
text branch's variance half. How the variance output is used comes from the run (``variance``):
``learned`` keeps the scheduler's ``learned_range``, ``fixed`` switches it to ``fixed_small``.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from cascade_booth.diffusion import sr_condition, unet_input, upsample


def make_scheduler(config: dict, variance: str, steps: int, device):
    """A DDPM sampling scheduler from a model's scheduler config, with the run's variance handling."""
    from diffusers import DDPMScheduler

    overrides = {} if variance == "learned" else {"variance_type": "fixed_small"}
    scheduler = DDPMScheduler.from_config(config, **overrides)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def _guided(unet, x_in: torch.Tensor, t, text: torch.Tensor, neg: torch.Tensor, guidance: float,
            class_labels: torch.Tensor | None, channels: int) -> torch.Tensor:
    both = torch.cat([neg, text])
    labels = None if class_labels is None else torch.cat([class_labels, class_labels])
    out = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=both, class_labels=labels, return_dict=False)[0]
    uncond, cond = out.chunk(2)
    eps_u, _ = uncond.split(channels, dim=1)
    eps_c, var = cond.split(channels, dim=1) if cond.shape[1] == 2 * channels else (cond, None)
    eps = eps_u + guidance * (eps_c - eps_u)
    return eps if var is None else torch.cat([eps, var], dim=1)


def _denoise(unet, scheduler, x, text, neg, guidance, generator, cond=None, class_labels=None, callback=None,
             timesteps=None):
    channels = x.shape[1]
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(unet_input(x, cond), t)
        out = _guided(unet, x_in, t, text, neg, guidance, class_labels, channels)
        if scheduler.config.variance_type not in ("learned", "learned_range"):
            out = out[:, :channels]
        x = scheduler.step(out, t, x, generator=generator, return_dict=False)[0]
        if callback:
            callback(i + 1, len(timesteps))
    return x


@torch.no_grad()
def sample_base(unet, scheduler, text, neg, guidance: float, generator, callback=None) -> torch.Tensor:
    """Stage one: text embeddings [B,77,d] -> images [B,3,64,64] in [-1,1]."""
    size = unet.config.sample_size
    shape = (text.shape[0], unet.config.in_channels, size, size)
    x = randn_tensor(shape, generator=generator, device=text.device, dtype=text.dtype)
    x = x * scheduler.init_noise_sigma
    return _denoise(unet, scheduler, x, text, neg, guidance, generator, callback=callback)


@torch.no_grad()
def sample_sr(unet, scheduler, noising_scheduler, low_res, text, neg, noise_level: int, guidance: float,
              generator, callback=None, start: str = "noise", strength: float = 1.0) -> torch.Tensor:
    """Stage two: 64 px images [B,3,64,64] in [-1,1] -> [B,3,S,S] with the training conditioning.

    ``start="input"`` begins from the upsampled input noised to the first timestep instead of pure
    noise. In training, x_t at IF's first sampling step (t = 960, alpha_bar 0.0037) still carries the
    image's low frequencies (they average the noise away over many pixels), so a model learns to read
    them from x_t; pure noise has none, and a small SR model then locks in a wrong colour at the first
    step (the flaw of non-zero terminal SNR, Lin et al. 2023). Same as diffusers'
    ``IFImg2ImgSuperResolutionPipeline`` with the upsampled input as ``original_image`` and strength 1.
    ``strength`` < 1 (start "input" only) runs the last ``int(strength * steps)`` steps (at least one) from the
    input noised to the first of them, as that pipeline does: the input's colours and shapes survive a weak SR
    model.
    """
    size = unet.config.sample_size
    shape = (low_res.shape[0], unet.config.in_channels // 2, size, size)
    x = randn_tensor(shape, generator=generator, device=text.device, dtype=text.dtype)
    x = x * scheduler.init_noise_sigma
    low_res = low_res.to(text.dtype)
    timesteps = scheduler.timesteps
    if start == "input":
        timesteps = timesteps[len(timesteps) - max(1, min(len(timesteps), int(len(timesteps) * strength))):]
        x = scheduler.add_noise(upsample(low_res, size), x, timesteps[:1])
    elif strength < 1:
        raise ValueError("strength < 1 needs start='input'")
    cond, labels = sr_condition(low_res, size, noise_level, noising_scheduler, generator)
    return _denoise(unet, scheduler, x, text, neg, guidance, generator, cond, labels, callback, timesteps)


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
