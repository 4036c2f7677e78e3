"""The world cascade's architecture and tokenizer: IF's layout, loadable by diffusers' IF pipelines."""

from __future__ import annotations

import pytest
import torch

from cascade_booth.config import load_config
from cascade_booth.identifier import choose_identifier
from cascade_booth.world import cascade


@pytest.fixture(scope="module")
def tokenizer():
    return cascade.build_tokenizer()


def _caption_ids(tokenizer) -> set[int]:
    used: set[int] = set()
    for text in cascade.all_captions():
        used.update(tokenizer(text, add_special_tokens=False).input_ids)
    return used


def test_identifier_ranks_hold_many_rare_short_pieces_that_no_caption_uses(tokenizer):
    cfg = load_config("world")
    low, high = cfg.identifier.rank_min, cfg.identifier.rank_max
    assert (low, high) == cascade.IDENTIFIER_RANKS
    pieces = tokenizer.convert_ids_to_tokens(list(range(low, min(high, len(tokenizer)))))
    rare = [p for p in pieces if p.startswith("▁") and 2 <= len(p) - 1 <= cfg.identifier.max_chars
            and p[1:].isalpha()]
    assert len(rare) >= 100
    assert not _caption_ids(tokenizer) & set(range(low, high))


def test_identifier_search_finds_a_rare_piece_in_the_world_range(tokenizer):
    cfg = load_config("world")
    used = _caption_ids(tokenizer)
    for seed in range(5):
        token = choose_identifier(tokenizer, "vase", seed, cfg.identifier.rank_min, cfg.identifier.rank_max,
                                  cfg.identifier.max_chars)
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] not in used
        assert cfg.identifier.rank_min <= ids[0] < cfg.identifier.rank_max


def test_random_world_cascade_loads_with_the_diffusers_if_pipelines(tmp_path, tokenizer):
    from diffusers import IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel

    encoder = cascade.build_text_encoder(len(tokenizer))
    for stage in (1, 2):
        cascade.save_pipeline(tmp_path / f"s{stage}", stage, UNet2DConditionModel(**cascade.unet_config(stage)),
                              tokenizer, encoder)
    base = IFPipeline.from_pretrained(tmp_path / "s1")
    sr = IFSuperResolutionPipeline.from_pretrained(tmp_path / "s2")
    assert base.unet.config.sample_size == 32 and base.unet.config.out_channels == 6
    assert base.scheduler.config.variance_type == "learned_range"
    assert sr.unet.config.in_channels == 6 and sr.unet.config.class_embed_type == "timestep"
    assert sr.unet.config.sample_size == 128
    gen = torch.Generator().manual_seed(0)
    low = base("a red vase", num_inference_steps=2, generator=gen, output_type="pt").images
    assert low.shape == (1, 3, 32, 32)
    high = sr(image=low, prompt="a red vase", num_inference_steps=2, generator=gen, noise_level=50,
              output_type="pt").images
    assert high.shape == (1, 3, 128, 128)
