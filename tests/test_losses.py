import pytest
import torch
from diffusers import DDPMScheduler

from cascade_booth.losses import diffusion_loss, prior_weighted_mean, split_output, vlb_term, x0_weights


def test_prior_weighted_mean_is_instance_mean_plus_lambda_prior_mean():
    losses = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    is_prior = torch.tensor([False, False, True, True, True])
    got = prior_weighted_mean(losses, is_prior, prior_weight=0.5)
    assert got.item() == pytest.approx(2.0 + 0.5 * 20.0)
    assert prior_weighted_mean(losses[:2], is_prior[:2], 1.0).item() == pytest.approx(2.0)  # no prior samples


def test_prior_weighted_mean_gradients_follow_the_weights():
    losses = torch.ones(4, requires_grad=True)
    prior_weighted_mean(losses, torch.tensor([False, False, True, True]), 2.0).backward()
    assert losses.grad.tolist() == [0.5, 0.5, 1.0, 1.0]


def test_diffusion_loss_is_per_sample_and_fixed_mode_ignores_variance():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    x_t = sched.add_noise(x0, noise, t)
    out = torch.cat([noise + 0.1, torch.zeros_like(x0)], dim=1)
    fixed = diffusion_loss(out, noise, x0, x_t, t, sched, "fixed")
    assert fixed.shape == (3,) and torch.allclose(fixed, torch.full((3,), 0.01))
    learned = diffusion_loss(out, noise, x0, x_t, t, sched, "learned")
    assert torch.all(learned > fixed)  # the variational-bound term is added


def test_vlb_is_smallest_for_the_true_posterior_variance():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([300])
    x_t = sched.add_noise(x0, noise, t)
    # v = -1 means the posterior variance (beta tilde), which is optimal given the true epsilon
    vals = {v: vlb_term(sched, x0, x_t, t, noise, torch.full_like(x0, v)).item() for v in (-1.0, 0.0, 1.0)}
    assert vals[-1.0] < vals[0.0] < vals[1.0]
    assert vals[-1.0] == pytest.approx(0.0, abs=1e-4)


def test_vlb_gradient_reaches_only_the_variance_head():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 600])
    out = torch.randn(2, 6, 8, 8, requires_grad=True)
    eps, var = split_output(out, 3)
    vlb_term(sched, x0, sched.add_noise(x0, noise, t), t, eps, var).sum().backward()
    assert out.grad[:, :3].abs().sum() == 0 and out.grad[:, 3:].abs().sum() > 0


def test_x0_weights_follow_one_over_alpha_bar_up_to_the_cap():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    t = torch.arange(1000)
    assert torch.equal(x0_weights(sched, t, 1.0), torch.ones(1000))  # the default: IF's plain loss
    w = x0_weights(sched, t, 20.0)
    assert w[0].item() == pytest.approx(1.0, abs=1e-3) and w[-1].item() == 20.0
    assert torch.all(w[1:] >= w[:-1])  # more weight as the image drowns in noise
    below = w < 20.0
    assert torch.allclose(w[below], 1.0 / sched.alphas_cumprod[below].float())
    assert 300 < int(below.sum()) < 1000  # the cap only bites at the noisiest steps


class _Recorder(torch.nn.Module):
    """A stand-in UNet that keeps the noisy input it was given and predicts zeros (6 channels: learned variance)."""

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None, return_dict=False):
        self.x_t, self.t = x, t
        return (torch.zeros(x.shape[0], 6, *x.shape[2:]),)


def test_offset_noise_shifts_each_images_noise_mean_and_zero_leaves_the_stream_alone():
    from cascade_booth.diffusion import training_losses

    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    x0, text = torch.zeros(64, 3, 16, 16), torch.zeros(64, 4, 8)
    unet = _Recorder()

    used = torch.Generator()

    def noise_means(offset: float) -> torch.Tensor:
        training_losses(unet, sched, x0, text, used.manual_seed(0), "learned", offset_noise=offset)
        noise = unet.x_t / (1 - sched.alphas_cumprod[unet.t]).sqrt().view(-1, 1, 1, 1)  # x0 = 0: x_t is the noise
        return noise.mean(dim=(2, 3))  # [64, 3]: each image's, each channel's mean

    gen = torch.Generator().manual_seed(0)  # offset 0: exactly the draws made before offset noise existed
    t = torch.randint(0, 1000, (64,), generator=gen)
    plain = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
    noise_means(0.0)
    assert torch.equal(unet.x_t, plain) and torch.equal(used.get_state(), gen.get_state())  # and no draw after
    assert noise_means(0.0).std().item() == pytest.approx(1 / 16, rel=0.2)  # the mean of 256 unit draws
    assert noise_means(1.0).std().item() == pytest.approx((1 + 1 / 256) ** 0.5, rel=0.2)


def test_coarse_samples_are_compared_on_block_means_alone():
    """[sr] class_block: a class pair's fine-detail error is free, its colour error counts in full."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    noise = torch.zeros(3, 3, 8, 8)
    checks = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0  # a 1 px pattern, mean 0
    detail = checks.expand(3, 8, 8)
    colour = torch.full((3, 8, 8), 0.5)
    out = torch.stack([detail, detail, colour])  # errors: detail (subject), detail (class), colour (class)
    t, x = torch.zeros(3, dtype=torch.long), torch.zeros(3, 3, 8, 8)
    coarse = torch.tensor([False, True, True])
    loss = diffusion_loss(out, noise, x, x, t, scheduler, "fixed", coarse=coarse, block=4)
    assert loss[0] == pytest.approx(1.0) and loss[1] == pytest.approx(0.0) and loss[2] == pytest.approx(0.25)
    full = diffusion_loss(out, noise, x, x, t, scheduler, "fixed", coarse=coarse, block=1)
    assert full.tolist() == pytest.approx([1.0, 1.0, 0.25])
