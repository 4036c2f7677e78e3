"""The world cascade's architecture: IF-I / IF-II in the diffusers layout, sized for a 2-core CPU.

Stage one draws 32 px from text (UNet2DConditionModel, learned variance: 6 output channels,
squaredcos_cap_v2 DDPM with ``learned_range``); stage two lifts 32 -> 128 (6 input channels: noisy
image + the upsampled, noise-augmented low-res image; the augmentation level as ``class_labels``).
Both read a frozen T5 encoder through a sentencepiece ``T5Tokenizer``, as IF does.

The T5 encoder is randomly initialised and frozen, never trained: IF's T5-XXL is frozen too, and a
random encoder keeps every word distinct without teaching the identifier any meaning. The rare
identifier pieces then have no prior in the language model, which is the paper's reason for them.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch

from cascade_booth.tiny import if_scheduler, noising_scheduler  # noqa: F401  (IF's schedulers, shared)
from cascade_booth.tiny import save_if_pipeline as save_pipeline  # noqa: F401  (one IF-layout writer)
from cascade_booth.world.vocab import CLASSES, COLOURS, CONTEXTS, PATTERNS, caption

TOKENIZER_VOCAB = 1200
IDENTIFIER_RANKS = (600, 1200)  # [identifier] rank_min / rank_max of configs/world.toml
T5_DIM = 64
SHIPPED = Path(__file__).parent / "models"  # base/, sr/, dino/, clip/ once pretrained


def all_captions() -> list[str]:
    """Every caption the template can produce (attributes present or left out)."""
    out = set()
    for cls, colour, pattern, context in itertools.product(
        CLASSES, [None, *COLOURS], [None, *PATTERNS], [None, *CONTEXTS]
    ):
        out.add(caption(cls, colour, pattern, context))
    return sorted(out)


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    captions = all_captions()
    lines = [rng.choice(captions) for _ in range(20000)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    # Short random letter strings: many rare pieces of 2-3 characters that no caption uses (the
    # identifier's candidates), like the rare sub-words in T5's vocabulary ranks 5000-10000.
    lines += ["".join(rng.choice(letters) for _ in range(rng.randint(2, 4))) for _ in range(8000)]
    return lines


def build_tokenizer():
    """A sentencepiece unigram model trained on the captions and rare strings, as a ``T5Tokenizer``."""
    from cascade_booth.tiny import train_t5_tokenizer

    return train_t5_tokenizer(_corpus(), TOKENIZER_VOCAB, extra_ids=0)


def build_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=T5_DIM, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=16, dropout_rate=0.0,
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config).eval().requires_grad_(False)


def unet_config(stage: int) -> dict:
    """IF-I (stage 1) / IF-II (stage 2) block layout at the world's sizes."""
    common = dict(
        layers_per_block=2, attention_head_dim=32, encoder_hid_dim=T5_DIM, encoder_hid_dim_type="text_proj",
        addition_embed_type="text", addition_embed_type_num_heads=4, cross_attention_norm="group_norm",
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", act_fn="gelu", resnet_time_scale_shift="scale_shift",
        norm_num_groups=16, out_channels=6,
    )
    if stage == 1:
        return dict(
            common, sample_size=32, in_channels=3, block_out_channels=(32, 64, 128), cross_attention_dim=128,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        )
    return dict(
        common, sample_size=128, in_channels=6, block_out_channels=(32, 64, 96, 128), cross_attention_dim=128,
        class_embed_type="timestep", layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D",
                          "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D",
                        "ResnetUpsampleBlock2D"),
    )
