"""The in-backward AdamW (``cascade_booth.optim``): same maths as torch's AdamW, gradients freed during
backward, non-finite gradients leave a parameter untouched, checkpoints keep bf16 moments, and a full
fine-tune of stage one with it resumes bitwise."""

from __future__ import annotations

import pytest
import torch
from helpers_reliability import config, same, train

from cascade_booth.config import load_config
from cascade_booth.config_checks import validate
from cascade_booth.errors import InputError
from cascade_booth.optim import InBackwardAdamW
from cascade_booth.runfolder import checkpoint_steps


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _loss(model: torch.nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(5, 8, generator=gen), torch.randn(5, 4, generator=gen)
    return (model(x) - y).square().mean()


def _train_reference(steps: int, lr: float) -> torch.nn.Module:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    for step in range(steps):
        _loss(model, step).backward()
        opt.step()
        opt.zero_grad()
    return model


def _train_in_backward(model: torch.nn.Module, opt: InBackwardAdamW, steps: range) -> None:
    for step in steps:
        _loss(model, step).backward()
        assert all(p.grad is None for p in model.parameters())  # freed inside backward
        assert not opt.nonfinite_step()
        opt.step()


def test_matches_torch_adamw_with_fp32_moments():
    expected = _train_reference(6, lr=1e-2)
    model = _model()
    opt = InBackwardAdamW(model.parameters(), lr=1e-2, state_dtype=torch.float32)
    opt.attach()
    _train_in_backward(model, opt, range(6))
    for got, want in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_moments_stay_bf16_and_track_adamw():
    expected = _train_reference(6, lr=1e-2)
    model = _model()
    opt = InBackwardAdamW(model.parameters(), lr=1e-2)
    opt.attach()
    _train_in_backward(model, opt, range(6))
    assert {s["exp_avg"].dtype for s in opt.state.values()} == {torch.bfloat16}
    start = _model()
    for got, want, p0 in zip(model.parameters(), expected.parameters(), start.parameters(), strict=True):
        assert not torch.equal(got, p0)
        # bf16 moments: the update's direction and size agree with fp32 AdamW to a few percent
        torch.testing.assert_close(got - p0, want - p0, rtol=0.1, atol=2e-3)


def test_nonfinite_gradient_leaves_that_parameter_unchanged():
    model = _model()
    opt = InBackwardAdamW(model.parameters(), lr=1e-2)
    opt.attach()
    first = model[0].weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = _loss(model, 0) + first[0, 0] * float("nan")  # poisons only this parameter's gradient
    loss.backward()
    assert opt.nonfinite_step()
    assert torch.equal(first, before["0.weight"])
    assert opt.state[first]["exp_avg"].abs().sum() == 0
    assert not torch.equal(model[2].weight, before["2.weight"])  # finite gradients were applied
    assert not opt.nonfinite_step()  # the flag is per step


def test_state_dict_round_trip_resumes_identically():
    straight = _model()
    opt = InBackwardAdamW(straight.parameters(), lr=1e-2)
    opt.attach()
    _train_in_backward(straight, opt, range(4))

    first = _model()
    opt1 = InBackwardAdamW(first.parameters(), lr=1e-2)
    opt1.attach()
    _train_in_backward(first, opt1, range(2))
    saved = opt1.state_dict()
    resumed = _model(seed=1)
    resumed.load_state_dict(first.state_dict())
    opt2 = InBackwardAdamW(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(saved)
    opt2.attach()
    assert opt2.param_groups[0]["step_count"] == 2
    assert {s["exp_avg_sq"].dtype for s in opt2.state.values()} == {torch.bfloat16}
    _train_in_backward(resumed, opt2, range(2, 4))
    for got, want in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("change, culprit", [
    (dict(max_grad_norm=1.0), "max_grad_norm = 0"),
    (dict(gradient_accumulation=2), "gradient_accumulation = 1"),
    (dict(mixed_precision="fp16"), "does not support fp16"),
    (dict(optimizer="sgd"), "optimizer must be one of"),
])
def test_config_rejects_settings_that_cannot_work(change, culprit):
    cfg = load_config("tiny")
    cfg.base.optimizer, cfg.base.max_grad_norm = "adamw-in-backward", 0.0
    for key, value in change.items():
        setattr(cfg.base, key, value)
    with pytest.raises(InputError, match=culprit):
        validate(cfg)


def test_several_processes_are_refused_by_the_trainers_check():
    from cascade_booth.optim import in_backward_problems

    cfg = load_config("tiny").base
    cfg.optimizer, cfg.max_grad_norm = "adamw-in-backward", 0.0
    assert in_backward_problems(cfg, processes=1) == []
    assert any("one process only" in p for p in in_backward_problems(cfg, processes=2))


def test_full_fine_tune_in_backward_resumes_bitwise(tmp_path, env):
    cfg = dict(full=True, optimizer="adamw-in-backward", max_grad_norm=0.0, lr=1e-5)
    straight = train(tmp_path / "straight", config(**cfg))
    assert straight.identifier
    halfway = tmp_path / "halfway"
    train(halfway, config(**{**cfg, "steps": 2}))
    assert checkpoint_steps(halfway / "base" / "checkpoints") == [2]
    train(halfway, config(**cfg), resume=True, allow_drift=True)

    from safetensors.torch import load_file

    def unet(run):
        return load_file(str(run / "base" / "unet" / "diffusion_pytorch_model.safetensors"))

    assert same(unet(halfway), unet(tmp_path / "straight"))
