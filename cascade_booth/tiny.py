"""A tiny, offline, random-weight IF cascade with DeepFloyd IF's real architecture and resolutions.

Every test, CI and the CPU ``demo`` run the same code paths as IF-I / IF-II on a GPU, on this
cascade: stage I (64 px, 6 output channels = epsilon + learned variance, text_proj of T5 states)
and stage II (64 -> 256, 6 input channels = noisy image + upsampled low-res image,
``class_embed_type="timestep"`` for the noise-augmentation level). The T5 tokenizer is a
sentencepiece unigram model trained on the fly on a fixed corpus, so the identifier rule has a
real vocabulary to work on. Weights are random: the cascade draws noise, never a subject.
"""

from __future__ import annotations

import io
import random
import shutil
import tempfile
from pathlib import Path

import torch

TINY_VERSION = "tiny-v1"
TOKENIZER_VOCAB = 2000
T5_DIM = 32

_WORDS = (
    "a an the of in on with and photo picture clock backpack dog cat toy sneaker boot vase teapot "
    "candle bowl can car robot plushie bear sloth duck monster glasses sunglasses cartoon jungle "
    "snow beach city street forest water floating top wooden floor blue red purple green pink "
    "yellow white black house cube shaped bucket fabric rug mountain sky dirt road grass field "
    "wearing hat santa chef police firefighter outfit rainbow scarf sailor shiny colorful fancy "
    "grey wolf poop emoji berry rc bench table sand kitchen background eiffel tower moon"
).split()


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10))) for _ in range(3000)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    # Short letter strings give the vocabulary many rare 2-3 character pieces, like T5's.
    lines += ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(6000)]
    return lines


def train_t5_tokenizer(lines: list[str], vocab_size: int, extra_ids: int = 100):
    """Train a sentencepiece unigram model on ``lines`` and wrap it as a transformers ``T5Tokenizer``."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        num_threads=1, seed_sentencepiece_size=100000, minloglevel=2,
    )
    proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(proc.id_to_piece(i), proc.get_score(i)) for i in range(proc.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids)


def build_tokenizer():
    """The tiny cascade's tokenizer: T5's kind, trained on prompt-like word salad and rare strings."""
    return train_t5_tokenizer(_corpus(), TOKENIZER_VOCAB)


def build_text_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=T5_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, dropout_rate=0.0,
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config)


def unet_config(stage: int) -> dict:
    """IF-shaped UNet config (same block types, conditioning and channels as IF-I / IF-II)."""
    common = dict(
        layers_per_block=1, attention_head_dim=16, cross_attention_dim=64, encoder_hid_dim=T5_DIM,
        encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", mid_block_type="UNetMidBlock2DSimpleCrossAttn", act_fn="gelu",
        resnet_time_scale_shift="scale_shift", norm_num_groups=8, out_channels=6,
    )
    if stage == 1:
        return dict(
            common, sample_size=64, in_channels=3, block_out_channels=(32, 64),
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        )
    return dict(
        common, sample_size=256, in_channels=6, block_out_channels=(16, 32, 64), class_embed_type="timestep",
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
    )


def if_scheduler(sample_max_value: float):
    """IF's sampling scheduler (learned_range variance, dynamic thresholding)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        variance_type="learned_range", beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
        thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=sample_max_value,
    )


def noising_scheduler():
    """IF-II's ``image_noising_scheduler``: noise-augments the upsampled low-res input."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="squaredcos_cap_v2")


def save_if_pipeline(out: Path, stage: int, unet, tokenizer, text_encoder) -> None:
    """Write ``out`` as an IFPipeline (stage 1) or IFSuperResolutionPipeline (stage 2) folder."""
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    none = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    if stage == 1:
        pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=if_scheduler(1.5),
                          **none)
    else:
        pipe = IFSuperResolutionPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
                                         scheduler=if_scheduler(1.0), image_noising_scheduler=noising_scheduler(),
                                         **none)
    pipe.save_pretrained(out, safe_serialization=True)


def build_cascade(out: Path, seed: int = 0) -> None:
    """Write ``out/stage1`` (IFPipeline) and ``out/stage2`` (IFSuperResolutionPipeline) in diffusers layout."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    for stage in (1, 2):
        save_if_pipeline(out / f"stage{stage}", stage, UNet2DConditionModel(**unet_config(stage)), tokenizer,
                         text_encoder)


def ensure_tiny_cascade(cache_dir: Path) -> Path:
    """Build the tiny cascade once into ``cache_dir/models/tiny-v1`` (atomic) and return that folder."""
    target = cache_dir / "models" / TINY_VERSION
    if (target / "stage2" / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_cascade(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "stage2" / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
