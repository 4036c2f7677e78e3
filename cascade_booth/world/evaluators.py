"""The world's evaluators: a "DINO" ViT, a CLIP and an attribute read-back classifier, trained on the world.

- ``dino``: a ``transformers.ViTModel`` whose CLS token is the image feature (what
  :class:`cascade_booth.evaluation.extractors.DinoExtractor` reads). Trained *contrastively on design
  ids* (supervised InfoNCE): two photos of one design in different contexts and poses are positives,
  every other design in the batch a negative, so DINO similarity measures subject fidelity
  (paper section 4.1) and not the background.
- ``clip``: a ``transformers.CLIPModel`` + ``CLIPTokenizer`` trained contrastively on world images and
  their captions (CLIP-I / CLIP-T).
- ``attributes``: a small CNN with one head per attribute (class, colour, pattern, context) trained on
  ground-truth renders; it reads back what a sample shows. Its accuracy on held-out ground truth is
  the ceiling of every read-back figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cascade_booth.evaluation.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from cascade_booth.world.vocab import CLASSES, COLOURS, CONTEXTS, PATTERNS, TEMPLATE

IMAGE_SIZE = 128
ATTRIBUTES = {"class": list(CLASSES), "colour": list(COLOURS), "pattern": list(PATTERNS), "context": list(CONTEXTS)}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _processor(kind: str, mean, std) -> dict:
    return {"image_processor_type": kind, "do_resize": True, "do_normalize": True, "do_center_crop": False,
            "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "resample": 3,
            "image_mean": list(mean), "image_std": list(std)}


def build_dino(seed: int = 0):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                       image_size=IMAGE_SIZE, patch_size=16)
    torch.manual_seed(seed)
    return ViTModel(config, add_pooling_layer=False)


def save_dino(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    _write_json(folder / "preprocessor_config.json", _processor("ViTImageProcessor", IMAGENET_MEAN, IMAGENET_STD))


def _words() -> list[str]:
    words = set(TEMPLATE.replace("{", " ").replace("}", " ").split()) | {"a"}
    for phrase in [*CLASSES, *COLOURS, *PATTERNS.values(), *CONTEXTS.values()]:
        words.update(phrase.split())
    return sorted(w for w in words if w.isalpha())


def _bpe_for_words(words: list[str], symbols: list[str]) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary in which every world word is one token (prefix merges), bytes as fallback."""
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            if left not in tokens:
                tokens.append(left)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def build_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    from cascade_booth.evaluation.tiny import _byte_symbols

    vocab, merges = _bpe_for_words(_words(), _byte_symbols())
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def build_clip(vocab: dict[str, int] | int, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    size = vocab if isinstance(vocab, int) else len(vocab)
    layers = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4}
    text = {**layers, "vocab_size": size, "max_position_embeddings": 77, "bos_token_id": size - 2,
            "eos_token_id": size - 1, "pad_token_id": size - 1}
    vision = {**layers, "image_size": IMAGE_SIZE, "patch_size": 16}
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))


def save_clip(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", _processor("CLIPImageProcessor", CLIP_MEAN, CLIP_STD))


class AttributeNet(nn.Module):
    """Conv net, 128 px input in [-1, 1] -> logits per attribute (a dict of [B, n] tensors)."""

    def __init__(self, width: int = 16):
        super().__init__()
        # A stride-2 stem keeps the 128 px input (the patterns' 1-2 px strokes) at a quarter of the cost.
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.SiLU()]
        chans = [width, width * 2, width * 4, width * 8, width * 8]
        for cin, cout in zip(chans, chans[1:], strict=False):  # 64 -> 4 px
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({k: nn.Linear(chans[-1] * 2, len(v)) for k, v in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-1] != IMAGE_SIZE:  # stage-one samples (32 px) are read at 128 px, as they were upsampled
            x = F.interpolate(x, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        h = self.features(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def read(self, x: torch.Tensor) -> list[dict[str, str]]:
        """What each image shows: ``[{"class": "vase", "colour": "red", ...}, ...]``."""
        logits = self.eval()(x)
        picks = {k: v.argmax(1).tolist() for k, v in logits.items()}
        return [{k: ATTRIBUTES[k][picks[k][i]] for k in ATTRIBUTES} for i in range(x.shape[0])]


def save_attributes(model: AttributeNet, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    _write_json(folder / "config.json", {"model_type": "cascade-booth-world-attributes", "width": 16,
                                         "image_size": IMAGE_SIZE, "labels": ATTRIBUTES})


def load_attributes(folder: Path) -> AttributeNet:
    from cascade_booth.safeload import load_state_dict

    config = json.loads((folder / "config.json").read_text())
    model = AttributeNet(int(config["width"]))
    model.load_state_dict(load_state_dict(folder / "model.safetensors"))
    return model.eval()
