"""Image loading and model-input preprocessing without torchvision.

Resize the shortest side, center crop to the model's input size, scale to [0, 1], normalize with the
model's mean/std. Sizes and statistics come from a saved ``preprocessor_config.json`` when there is
one, else from the model config (input size) and ImageNet (DINO) / CLIP defaults.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cascade_booth.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageLike = Image.Image | str | Path


def load_image(source: ImageLike) -> Image.Image:
    """Open an image as RGB; transparent pixels are composited onto white."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            with Image.open(source) as opened:
                image = opened.copy()
        except (OSError, ValueError) as err:
            raise InputError(f"{source}: cannot read image ({err})") from err
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Shortest-side resize to ``resize``, center crop to ``crop`` x ``crop``, then normalize."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = int(Image.Resampling.BICUBIC)

    def image_to_array(self, image: ImageLike) -> np.ndarray:
        """One image -> float32 array ``[3, crop, crop]``, normalized."""
        image = load_image(image)
        width, height = image.size
        scale = self.resize / min(width, height)
        new_w, new_h = max(self.crop, round(width * scale)), max(self.crop, round(height * scale))
        image = image.resize((new_w, new_h), resample=Image.Resampling(self.resample))
        left, top = (new_w - self.crop) // 2, (new_h - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return array.transpose(2, 0, 1)

    def __call__(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """A batch of images -> ``[B, 3, crop, crop]`` float32 tensor."""
        return torch.from_numpy(np.stack([self.image_to_array(image) for image in images]))

    def describe(self) -> dict:
        return {"resize_shortest_side": self.resize, "center_crop": self.crop,
                "mean": list(self.mean), "std": list(self.std), "resample": self.resample}


def _edge(value, *keys: str) -> int | None:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return int(value[key])
        if "height" in value and "width" in value:
            return int(min(value["height"], value["width"]))
    return None


def read_preprocessor_config(path: Path | None) -> dict:
    """Load a ``preprocessor_config.json`` (empty dict if ``path`` is None, missing or unreadable)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def build_preprocess(processor: dict, image_size: int, default_mean, default_std) -> Preprocess:
    """Combine a processor config with the model's input size.

    The crop is always the model's ``image_size`` (its position embeddings fix it); the resize is the
    processor's shortest edge when it is at least that large.
    """
    mean = tuple(float(v) for v in processor.get("image_mean", default_mean))
    std = tuple(float(v) for v in processor.get("image_std", default_std))
    resize = _edge(processor.get("size"), "shortest_edge") or image_size
    resample = processor.get("resample", int(Image.Resampling.BICUBIC))
    if not isinstance(resample, int) or resample not in {int(r) for r in Image.Resampling}:
        resample = int(Image.Resampling.BICUBIC)
    if len(mean) != 3 or len(std) != 3:
        mean, std = tuple(default_mean), tuple(default_std)
    return Preprocess(resize=max(resize, image_size), crop=int(image_size), mean=mean, std=std,
                      resample=resample)
