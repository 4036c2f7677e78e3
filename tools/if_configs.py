"""diffusers ``UNet2DConditionModel`` configs of DeepFloyd IF, and random-weight builders for benchmarks.

Sources (checked in this session through the code/doc search tools, 2026-11):

* IF-I-XL-v1.0: the hub ``unet/config.json`` as copied into a DreamBooth fine-tune of it
  (huggingface.co/lucostiguy11/dreambooth_if, ``"_name_or_path": "DeepFloyd/IF-I-XL-v1.0"``), and the
  original DeepFloyd ``config.yml`` copied at huggingface.co/ckpt/IF-I-XL-v1.0-16bit and ara77/ifxl
  (model_channels 704, channel_mult "1,2,3,4", num_res_blocks 3, attention_resolutions "32,16,8",
  num_head_channels 64, encoder_dim 4096, encoder_channels 2816, att_pool_heads 64,
  use_scale_shift_norm, resblock_updown, activation gelu). diffusers' ``scripts/convert_if.py``
  (``create_unet_diffusers_config``) maps those yaml keys to the dict below.
* IF-II-L-v1.0: the hub ``unet/config.json`` as copied into huggingface.co/williamberman/
  dreambooth_me_upscale (``"_name_or_path": "DeepFloyd/IF-II-L-v1.0"``): block_out_channels
  160/320/640/960/1280, layers_per_block [2, 2, 3, 5, 5], class_embed_type "timestep",
  cross_attention_dim 1280, resnet_skip_time_act, resnet_out_scale_factor and mid_block_scale_factor
  1.4142271248762552. The up-block list follows convert_if.py's ``superres_create_unet_diffusers_config``
  (mirror of the down blocks); ``sample_size`` was not in the excerpt seen (it does not change weights).
* IF-I-L-v1.0, IF-I-M-v1.0, IF-II-M-v1.0: NO copy of their configs was found in the search corpus.
  They are RECONSTRUCTED here from the family pattern of the two verified configs (same block types,
  channel_mult, layers, head dim 64, cross_attention_dim = last block width) with the one width
  that lands on the model cards' parameter counts (900M, 400M, 450M). Check them against the hub
  ``unet/config.json`` before relying on anything but their size.

Parameter counts (``param_count``, built on the meta device; see ``python tools/if_configs.py``):
IF-I-XL 4.305B (card: 4.3B), IF-II-L 1.188B (card: 1.2B), IF-I-L 0.935B (card: 900M),
IF-I-M 0.372B (card: 400M), IF-II-M 0.462B (card: 450M), cpu-100m 0.0875B.
"""

from __future__ import annotations

import torch

# Keys shared by every IF UNet (diffusers names). ``encoder_hid_dim`` is T5-XXL's width: the UNet
# projects the precomputed T5 states ([B, 77, 4096]) with a linear ``encoder_hid_proj`` (text_proj),
# and pools them with 64 attention heads into the time embedding (addition_embed_type "text").
_COMMON = dict(
    act_fn="gelu",
    addition_embed_type="text",
    addition_embed_type_num_heads=64,
    attention_head_dim=64,
    center_input_sample=False,
    class_embeddings_concat=False,
    conv_in_kernel=3,
    conv_out_kernel=3,
    cross_attention_norm="group_norm",
    downsample_padding=1,
    dual_cross_attention=False,
    encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj",
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_only_cross_attention=None,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    norm_eps=1e-05,
    norm_num_groups=32,
    num_class_embeds=None,
    only_cross_attention=False,
    out_channels=6,  # epsilon + learned-range variance interpolation
    projection_class_embeddings_input_dim=None,
    resnet_time_scale_shift="scale_shift",
    time_cond_proj_dim=None,
    time_embedding_act_fn=None,
    time_embedding_dim=None,
    time_embedding_type="positional",
    timestep_post_act=None,
    upcast_attention=False,
    use_linear_projection=False,
)

_STAGE1_BLOCKS = dict(
    down_block_types=(
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    up_block_types=(
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ),
)

_STAGE2_BLOCKS = dict(
    down_block_types=(
        "ResnetDownsampleBlock2D",
        "ResnetDownsampleBlock2D",
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    up_block_types=(
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
        "ResnetUpsampleBlock2D",
        "ResnetUpsampleBlock2D",
    ),
)


def _stage1(model_channels: int, layers_per_block: int = 3, sample_size: int = 64) -> dict:
    widths = tuple(model_channels * m for m in (1, 2, 3, 4))  # channel_mult "1,2,3,4"
    return dict(
        _COMMON,
        **_STAGE1_BLOCKS,
        sample_size=sample_size,
        in_channels=3,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        cross_attention_dim=widths[-1],  # encoder_channels
        class_embed_type=None,
        mid_block_scale_factor=1,
        resnet_out_scale_factor=1.0,
        resnet_skip_time_act=False,
    )


def _stage2(model_channels: int) -> dict:
    widths = tuple(model_channels * m for m in (1, 2, 4, 6, 8))
    return dict(
        _COMMON,
        **_STAGE2_BLOCKS,
        sample_size=256,
        in_channels=6,  # noisy 256 px image + upsampled, noise-augmented 64 px image
        block_out_channels=widths,
        layers_per_block=(2, 2, 3, 5, 5),
        cross_attention_dim=widths[-1],
        class_embed_type="timestep",  # noise-augmentation level enters as class_labels
        mid_block_scale_factor=1.4142271248762552,
        resnet_out_scale_factor=1.4142271248762552,
        resnet_skip_time_act=True,
    )


# Verified against copies of the hub configs (see module docstring).
IF_I_XL = _stage1(704)
IF_II_L = _stage2(160)
# Reconstructed (family pattern + published parameter count); NOT verified against the hub.
IF_I_L = _stage1(320)
IF_I_M = _stage1(192)
IF_II_M = _stage2(96)
# ~100M IF-shaped stage-one UNet for CPU runs: XL's block types, depth (3 resnets per block),
# channel_mult, head dim, text_proj of 4096-d T5 states, 64 px, 6 output channels, at 64/704 of
# its width (87.5M parameters).
CPU_100M = _stage1(64)
# Small IF-II-shaped UNet (6-channel input, timestep class embedding) for CPU runs of the SR path.
CPU_SR = _stage2(32)
# Smoke-test sizes (same block types and conditioning; a few million parameters) for slow CPUs.
CPU_TINY = dict(_stage1(32, layers_per_block=1), attention_head_dim=32)
CPU_TINY_SR = dict(_stage2(16), attention_head_dim=32, norm_num_groups=16, layers_per_block=(1, 1, 1, 1, 1))

CONFIGS: dict[str, dict] = {
    "IF-I-XL-v1.0": IF_I_XL,
    "IF-I-L-v1.0": IF_I_L,
    "IF-I-M-v1.0": IF_I_M,
    "IF-II-L-v1.0": IF_II_L,
    "IF-II-M-v1.0": IF_II_M,
    "cpu-100m": CPU_100M,
    "cpu-sr": CPU_SR,
    "cpu-tiny": CPU_TINY,
    "cpu-tiny-sr": CPU_TINY_SR,
}
VERIFIED = {"IF-I-XL-v1.0", "IF-II-L-v1.0"}
PUBLISHED_PARAMS = {
    "IF-I-XL-v1.0": 4.3e9,
    "IF-I-L-v1.0": 0.9e9,
    "IF-I-M-v1.0": 0.4e9,
    "IF-II-L-v1.0": 1.2e9,
    "IF-II-M-v1.0": 0.45e9,
}
_ALIASES = {
    "if-i-xl": "IF-I-XL-v1.0",
    "if-i-l": "IF-I-L-v1.0",
    "if-i-m": "IF-I-M-v1.0",
    "if-ii-l": "IF-II-L-v1.0",
    "if-ii-m": "IF-II-M-v1.0",
}


def resolve(name: str) -> str:
    if name in CONFIGS:
        return name
    key = _ALIASES.get(name.lower().removesuffix("-v1.0"))
    if key is None:
        raise KeyError(f"unknown UNet config {name!r}; known: {sorted(CONFIGS)}")
    return key


def unet_config(name: str) -> dict:
    """A copy of the diffusers config dict for ``name`` (e.g. ``IF-I-XL-v1.0`` or ``if-i-xl``)."""
    cfg = dict(CONFIGS[resolve(name)])
    for key, value in cfg.items():
        if isinstance(value, tuple):
            cfg[key] = list(value)
    return cfg


def is_stage2(name: str) -> bool:
    return unet_config(name)["in_channels"] == 6


def build_unet(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 0,
               **overrides):
    """A random-weight ``UNet2DConditionModel`` of config ``name`` (``overrides`` replace its keys) on
    ``device`` in ``dtype``.

    Plain parameter init (no meta device): the weights are real random numbers, so kernels see
    realistic data. Built directly on ``device`` in fp32 (diffusers' default init), then cast.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**(unet_config(name) | overrides))
    if dtype != torch.float32:
        unet.to(dtype)
    return unet


def param_count(name: str) -> int:
    """Number of parameters of config ``name``, counted on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(name))
    return sum(p.numel() for p in unet.parameters())


if __name__ == "__main__":
    for key in CONFIGS:
        n = param_count(key)
        pub = PUBLISHED_PARAMS.get(key)
        ref = f"card {pub / 1e9:.2f}B ({n / pub - 1:+.1%})" if pub else "-"
        src = "verified" if key in VERIFIED else ("reconstructed" if pub else "benchmark")
        print(f"{key:14s} {n / 1e9:7.3f}B  {ref:22s} {src}")
