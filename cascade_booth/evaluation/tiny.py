"""Tiny random-weight DINO ViT and CLIP models, saved in Hugging Face layout, for offline tests.

They have the real architectures (``ViTModel``, ``CLIPModel`` + a byte-level BPE ``CLIPTokenizer``)
at toy sizes (hidden 32, 2 layers, 32 px input), so the evaluation code paths run on a CPU in well
under a second. Their numbers mean nothing. The folders load with ``--dino-model DIR`` /
``--clip-model DIR`` exactly like downloaded models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cascade_booth.evaluation.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

TINY_IMAGE_SIZE = 32
TINY_HIDDEN = 32
TINY_LAYERS = 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_clip_vocab() -> dict[str, int]:
    """A merge-free CLIP vocabulary: every byte symbol, alone and word-final, then BOS and EOS."""
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_tiny_dino(folder: str | Path, seed: int = 0) -> Path:
    """Write a random ``ViTModel`` (no pooler) plus a ``preprocessor_config.json`` into ``folder``."""
    from transformers import ViTConfig, ViTModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS, num_attention_heads=2,
                       intermediate_size=2 * TINY_HIDDEN, image_size=TINY_IMAGE_SIZE, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(config, add_pooling_layer=False)
    model.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "do_normalize": True,
        "size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, "resample": 3,
        "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
    })
    return folder


def build_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Write a random ``CLIPModel``, a byte-level ``CLIPTokenizer`` and a processor config into ``folder``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_clip_vocab()
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    CLIPTokenizer.from_pretrained(folder).save_pretrained(folder)
    layers = {"hidden_size": TINY_HIDDEN, "intermediate_size": 2 * TINY_HIDDEN,
              "num_hidden_layers": TINY_LAYERS, "num_attention_heads": 2}
    text = {**layers, "vocab_size": len(vocab), "max_position_embeddings": 77, "bos_token_id": vocab[BOS],
            "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    vision = {**layers, "image_size": TINY_IMAGE_SIZE, "patch_size": 8}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "do_center_crop": True,
        "size": {"shortest_edge": TINY_IMAGE_SIZE},
        "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        "resample": 3, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
    })
    return folder


def build_tiny_models(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build both tiny models under ``root`` (``root/dino``, ``root/clip``); returns their folders."""
    root = Path(root)
    return {"dino": build_tiny_dino(root / "dino", seed), "clip": build_tiny_clip(root / "clip", seed + 1)}
