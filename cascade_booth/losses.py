"""Per-sample diffusion losses and the prior-preservation weighted mean.

Losses return one value per sample (k-diffusion style), so the class-specific prior-preservation
loss of DreamBooth (Ruiz et al. 2022, section 3.3, eq. 2) is a weighted mean over a mask:

    L = mean(instance losses) + lambda * mean(prior losses)

DeepFloyd IF predicts epsilon *and* an interpolation value for the variance ("learned_range",
Nichol & Dhariwal 2021, section 3.1). With ``variance="learned"`` we train both heads with IF's own
hybrid objective (L_simple + L_vlb with a stop-gradient on the mean), so the scheduler keeps
``learned_range`` at inference. With ``variance="fixed"`` only epsilon is trained and the runner
switches the scheduler to ``fixed_small`` (what diffusers' DreamBooth scripts ask users to do by hand).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VARIANCE_MODES = ("learned", "fixed")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.flatten(1).mean(dim=1)


def split_output(model_output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a UNet output into (epsilon, variance values or None)."""
    if model_output.shape[1] == 2 * channels:
        eps, var_values = model_output.split(channels, dim=1)
        return eps, var_values
    return model_output, None


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = values.to(device=t.device, dtype=torch.float64)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.ndim - 1)))


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of 8-bit data in [-1, 1] under a discretized Gaussian (nats)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    return -log_probs


def vlb_term(
    scheduler, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, var_values: torch.Tensor
) -> torch.Tensor:
    """Per-sample L_t of the variational bound in bits, gradient to the variance head only.

    Nichol & Dhariwal 2021, eq. 15-16: the mean is built from a detached epsilon, so this term trains
    the variance interpolation while L_simple trains epsilon.
    """
    betas = scheduler.betas.to(torch.float64)
    acp = scheduler.alphas_cumprod.to(betas.device, torch.float64)  # add_noise may have moved it to the GPU
    acp_prev = torch.cat([acp.new_ones(1), acp[:-1]])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1 = betas * acp_prev.sqrt() / (1.0 - acp)
    coef2 = (1.0 - acp_prev) * (1.0 - betas).sqrt() / (1.0 - acp)

    x0, x_t, eps = x0.float(), x_t.float(), eps.detach().float()
    true_mean = _gather(coef1, t, x0) * x0 + _gather(coef2, t, x0) * x_t
    true_log_var = _gather(post_log_var, t, x0)
    pred_x0 = (x_t - _gather((1.0 - acp).sqrt(), t, x0) * eps) / _gather(acp.sqrt(), t, x0)
    model_mean = _gather(coef1, t, x0) * pred_x0 + _gather(coef2, t, x0) * x_t
    frac = (var_values.float() + 1.0) / 2.0
    model_log_var = frac * _gather(torch.log(betas), t, x0) + (1.0 - frac) * true_log_var

    kl = mean_flat(_normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    nll = mean_flat(_discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def diffusion_loss(
    model_output: torch.Tensor,
    noise: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    scheduler,
    variance: str = "learned",
    coarse: torch.Tensor | None = None,
    block: int = 1,
) -> torch.Tensor:
    """Per-sample training loss for an epsilon-prediction UNet, shape ``[batch]``.

    ``variance="learned"`` adds IF's L_vlb term (rescaled by T/1000 as in improved-diffusion) when
    the UNet has a variance head; ``"fixed"`` trains epsilon only. Samples marked in ``coarse`` (with
    ``block`` > 1) are compared on ``coarse_error``'s block means alone, without the L_vlb term.
    """
    if variance not in VARIANCE_MODES:
        raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {variance!r}")
    eps, var_values = split_output(model_output, noise.shape[1])
    err = eps.float() - noise.float()
    loss = mean_flat(err**2)
    if variance == "learned" and var_values is not None:
        scale = scheduler.config.num_train_timesteps / 1000.0
        loss = loss + scale * vlb_term(scheduler, x0, x_t, t, eps, var_values)
    if coarse is not None and block > 1:
        loss = torch.where(coarse.to(loss.device, torch.bool), coarse_error(err, block), loss)
    return loss


def coarse_error(err: torch.Tensor, block: int) -> torch.Tensor:
    """Per-sample mean square of the error's ``block`` x ``block`` means: its colour and layout, not its detail.

    The epsilon error is the implied x0's error times a per-sample scale, so this compares the two images' block
    means. An error smooth over a block counts in full; detail finer than a block (a 1-2 px pattern) averages
    out. Stage two's class prior (``[sr] class_block``) uses it to keep the frozen SR's colours on class images
    without also teaching it to draw them without fine detail.
    """
    return mean_flat(F.avg_pool2d(err, block) ** 2)


def x0_weights(scheduler, t: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-sample loss weights ``min(1 / alpha_bar_t, cap)`` (1 where ``cap`` <= 1: the plain epsilon loss).

    The implied x0's error is the epsilon error times ``(1 - alpha_bar) / alpha_bar``, so where the image is
    mostly noise an epsilon error says little about x0, and the plain loss barely teaches what is decided
    there: an object's colour and layout. ``1 / alpha_bar = 1 + 1 / SNR`` weights those steps like the x0 error
    (Salimans & Ho 2022, section 4, truncated-SNR weighting), capped because it grows without bound as
    alpha_bar -> 0 (IF's cosine schedule reaches about 1/270 at its first sampling step).
    """
    if cap <= 1.0:
        return torch.ones(t.shape, device=t.device)
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t]
    return (1.0 / alpha_bar).clamp(max=cap).float()


def prior_weighted_mean(per_sample: torch.Tensor, is_prior: torch.Tensor, prior_weight: float) -> torch.Tensor:
    """DreamBooth eq. 2: mean over instance samples + ``prior_weight`` x mean over class (prior) samples.

    Each group is averaged on its own, so the balance does not depend on how many of each are in the
    batch; a batch with no prior samples reduces to the plain instance mean.
    """
    is_prior = is_prior.to(device=per_sample.device, dtype=torch.bool)
    n_prior = int(is_prior.sum())
    n_inst = per_sample.shape[0] - n_prior
    inst_w = torch.full_like(per_sample, 1.0 / max(n_inst, 1))
    prior_w = torch.full_like(per_sample, prior_weight / max(n_prior, 1))
    weights = torch.where(is_prior, prior_w, inst_w)
    return (weights * per_sample).sum()
