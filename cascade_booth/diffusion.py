"""The forward process and the UNet inputs of both stages, shared by training and the runner.

Stage two's conditioning (``sr_condition``) is THE function the runner uses at inference too, so
training sees exactly what sampling feeds the SR UNet (IFSuperResolutionPipeline.__call__ step 7):
bilinear upsample (align_corners=True), noise added by ``image_noising_scheduler`` at
``noise_level``, that level passed as ``class_labels``, channel concatenation with the noisy image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from cascade_booth.losses import diffusion_loss, x0_weights


def upsample(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """IF-II's upsampling of its low-resolution input (bilinear, corners aligned)."""
    return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=True)


def sr_condition(
    low_res: torch.Tensor, size: int, noise_level: int, noising_scheduler, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsample ``low_res`` ([B,3,h,w] in [-1,1]) to ``size`` and noise it; returns (image, class_labels)."""
    upscaled = upsample(low_res, size)
    labels = torch.tensor([noise_level] * upscaled.shape[0], device=upscaled.device)
    noise = randn_tensor(upscaled.shape, generator=generator, device=upscaled.device, dtype=upscaled.dtype)
    return noising_scheduler.add_noise(upscaled, noise, timesteps=labels), labels


def paired_crop(x0: torch.Tensor, cond: torch.Tensor, size: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``size`` x ``size`` window per sample, the same in the target ``x0`` and the conditioning ``cond``
    ([B,3,S,S] each): stage two's ``[sr] crop``, cut after ``sr_condition`` so the window holds exactly what the
    UNet sees there at inference."""
    room = x0.shape[-1] - size + 1
    corners = torch.randint(0, room, (x0.shape[0], 2), generator=generator, device=generator.device).tolist()
    windows = [(slice(None), slice(y, y + size), slice(x, x + size)) for y, x in corners]
    return (torch.stack([x0[i][w] for i, w in enumerate(windows)]),
            torch.stack([cond[i][w] for i, w in enumerate(windows)]))


def unet_input(x_t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """Stage one: the noisy image; stage two: noisy image and conditioning image along channels."""
    return x_t if cond is None else torch.cat([x_t, cond.to(x_t.dtype)], dim=1)


def training_losses(
    unet,
    scheduler,
    x0: torch.Tensor,
    text_embeds: torch.Tensor,
    generator: torch.Generator,
    variance: str,
    cond: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
    x0_weight_cap: float = 1.0,
    offset_noise: float = 0.0,
    coarse: torch.Tensor | None = None,
    block: int = 1,
) -> torch.Tensor:
    """One denoising-loss evaluation per sample: draw t and noise, noise ``x0``, run the UNet; each sample's loss
    weighted by ``losses.x0_weights`` (all 1 at the default cap). ``coarse`` / ``block``: ``losses.diffusion_loss``.

    ``offset_noise`` > 0 adds a per-(sample, channel) constant of that standard deviation to the noise
    (Guttenberg 2023, "Diffusion with offset noise"). IF's schedule leaves signal in x_t at the first sampling
    step (leading spacing: t = 960, alpha_bar 0.0037), so a model trained on plain noise reads each image's mean
    colour from x_t there; sampling starts from pure noise, whose mean is ~0, and the samples keep a mean
    near 0: too dark and grey (Lin et al. 2023, section 3). The offset makes the noise's mean uninformative,
    so the model learns the mean from the text instead. 0 draws nothing extra: the default stream is unchanged.
    """
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    if offset_noise > 0:
        noise = noise + offset_noise * torch.randn((b, x0.shape[1], 1, 1), generator=generator)
    noise = noise.to(x0.device, x0.dtype)
    x_t = scheduler.add_noise(x0, noise, t)
    out = unet(
        unet_input(x_t, cond), t, encoder_hidden_states=text_embeds, class_labels=class_labels, return_dict=False
    )[0]
    loss = diffusion_loss(out, noise, x0, x_t, t, scheduler, variance, coarse=coarse, block=block)
    return loss * x0_weights(scheduler, t, x0_weight_cap).to(loss.dtype)  # x 1.0 (exact) at the default cap
