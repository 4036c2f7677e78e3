"""The per-prompt cache of the UNet's frozen text branches (cascade_booth.condcache)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from cascade_booth.condcache import _RowMemo, cache_text_conditioning, uncache_text_conditioning
from cascade_booth.lora import add_lora
from cascade_booth.tiny import T5_DIM, unet_config


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**unet_config(1)).eval()


class _Counter:
    """Counts the rows a text branch really computes (its original forward), cached or not."""

    def __init__(self, module: torch.nn.Module):
        self.rows = 0
        memo = module.forward
        if isinstance(memo, _RowMemo):
            compute = memo.compute
            memo.compute = lambda x: (self._add(x), compute(x))[1]
        else:
            module.register_forward_hook(lambda _m, inputs, _out: self._add(inputs[0]))

    def _add(self, x: torch.Tensor) -> None:
        self.rows += x.shape[0]


def _inputs(text: torch.Tensor, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = unet_config(1)["sample_size"]
    x = torch.randn(text.shape[0], 3, size, size, generator=g)
    t = torch.randint(0, 1000, (text.shape[0],), generator=g)
    return x, t


def _out(unet, text: torch.Tensor, seed: int = 0) -> torch.Tensor:
    x, t = _inputs(text, seed)
    return unet(x.to(text.dtype), t, encoder_hidden_states=text, return_dict=False)[0]


def test_each_prompt_computed_once_and_outputs_unchanged():
    unet = _unet()
    prompts = torch.randn(3, 77, T5_DIM)
    batches = [prompts[[0, 1]], prompts[[1, 0]], prompts[[0, 0]], prompts[[2, 1]]]
    with torch.no_grad():
        expected = [_out(unet, b, seed=i) for i, b in enumerate(batches)]
    assert cache_text_conditioning(unet) == ["encoder_hid_proj", "add_embedding"]
    pooled, projected = _Counter(unet.add_embedding), _Counter(unet.encoder_hid_proj)
    with torch.no_grad():
        got = [_out(unet, b, seed=i) for i, b in enumerate(batches)]
    assert pooled.rows == 3 and projected.rows == 3  # three distinct prompts over eight rows
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_lora_training_step_caches_and_gradients_match():
    """LoRA: the text branches are frozen, so cached and uncached steps give the same adapter gradients."""
    text = torch.randn(2, 77, T5_DIM)
    grads = []
    for cached in (False, True):
        unet = _unet().train()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            params = add_lora(unet, 4)
        if cached:
            cache_text_conditioning(unet)
            counter = _Counter(unet.add_embedding)
        for _ in range(2):
            unet.zero_grad(set_to_none=True)
            _out(unet, text).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in params])
    assert counter.rows == 2
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_trainable_branch_is_never_cached():
    """Full fine-tune: the branches train, so every call computes them and they receive gradients."""
    unet = _unet().train()
    cache_text_conditioning(unet)
    counter = _Counter(unet.add_embedding)
    text = torch.randn(2, 77, T5_DIM)
    for _ in range(2):
        _out(unet, text).mean().backward()
    assert counter.rows == 4
    assert unet.add_embedding.norm1.weight.grad is not None
    assert unet.encoder_hid_proj.weight.grad is not None


def test_dtype_change_and_capacity_recompute():
    unet = _unet()
    cache_text_conditioning(unet)
    memo = unet.add_embedding.forward
    counter = _Counter(unet.add_embedding)
    text = torch.randn(1, 77, T5_DIM)
    with torch.no_grad():
        _out(unet, text)
        unet.double()  # another dtype: the float32 rows must not be served
        _out(unet, text.double())
        assert counter.rows == 2
        memo.capacity = 2
        for _ in range(3):
            _out(unet, torch.randn(1, 77, T5_DIM, dtype=torch.float64))
        assert len(memo.entries) == 2  # least recently used dropped
        _out(unet, text.double())  # evicted by the three new prompts: computed again
    assert counter.rows == 6


def test_state_dict_unchanged_and_uncache():
    unet = _unet()
    keys = list(unet.state_dict())
    cache_text_conditioning(unet)
    assert cache_text_conditioning(unet) == []  # already cached: nothing wrapped twice
    assert list(unet.state_dict()) == keys
    uncache_text_conditioning(unet)
    counter = _Counter(unet.add_embedding)
    text = torch.randn(1, 77, T5_DIM)
    with torch.no_grad():
        _out(unet, text)
        _out(unet, text)
    assert counter.rows == 2


@pytest.mark.parametrize("change", ["weights", "prompt"])
def test_in_place_changes_are_never_served_stale(change):
    """Weights changed in place (an optimizer step, ``load_state_dict``) or the very prompt tensor a
    sampler reuses, changed in place (the fast path's same-tensor check), are computed afresh."""
    unet = _unet().requires_grad_(False)
    cache_text_conditioning(unet)
    counter = _Counter(unet.add_embedding)
    text = torch.randn(2, 77, T5_DIM)
    with torch.no_grad():
        first = _out(unet, text)
        assert torch.equal(_out(unet, text), first)  # unchanged: served from the cache
        (unet.add_embedding.proj.weight if change == "weights" else text).mul_(0.5)
        changed = _out(unet, text)
        uncache_text_conditioning(unet)
        expected = _out(unet, text)
    assert counter.rows == 4
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, expected, rtol=1e-5, atol=1e-5)
