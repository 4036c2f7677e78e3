"""Embedding extractors for the paper's metrics (section 4.1): DINO ViT-S/16 and CLIP.

``DinoExtractor`` embeds an image as the CLS token of a ``ViTModel``'s last hidden state (the DINO
paper's image feature). ``ClipExtractor`` gives CLIP's projected image and text embeddings. Both are
``torch.nn.Module`` wrappers that batch their inputs and run on any device.

Loading never downloads when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set; a model that
cannot be found raises :class:`cascade_booth.errors.ModelNotFoundError` naming the download command
and the option to point at a local folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cascade_booth.errors import InputError, ModelNotFoundError
from cascade_booth.evaluation.paper import DEFAULT_CLIP, DEFAULT_DINO
from cascade_booth.evaluation.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLike,
    Preprocess,
    build_preprocess,
    read_preprocessor_config,
)
from cascade_booth.models import offline
from cascade_booth.safeload import LoadError, load_pretrained

PROCESSOR_FILE = "preprocessor_config.json"


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1 or (len(spec) > 1 and spec[1] == ":")


def _hint(model_id: str, option: str) -> str:
    return (f"Download it once on a machine with internet: `huggingface-cli download {model_id}` (or "
            f"`huggingface-cli download {model_id} --local-dir DIR` and pass {option} DIR), or pass {option} "
            "with a folder holding config.json and the weights. For an offline smoke test, tiny random "
            "models come from cascade_booth.evaluation.tiny.build_tiny_models(DIR).")


def _folder_hint(option: str, default: str) -> str:
    return (f"Pass {option} with a folder holding config.json and the weights (written by save_pretrained, "
            f"or by `huggingface-cli download {default} --local-dir DIR`), or a hub id such as {default}.")


def resolve_source(spec: str, what: str, option: str, default: str) -> tuple[str, bool]:
    """Return ``(name_or_path, is_local_folder)``; raise ModelNotFoundError for a bad local path."""
    spec = str(spec).strip()
    if not spec:
        raise ModelNotFoundError(f"{what} model: empty id. " + _folder_hint(option, default))
    if spec == "world":  # the evaluators shipped with the world (cascade_booth/world/models/dino, clip)
        from cascade_booth.world.cascade import SHIPPED

        spec = str(SHIPPED / what.lower())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{what} model folder {path}: no config.json in it. "
                                     + _folder_hint(option, default))
        return str(path), True
    if _looks_like_path(spec) or path.exists():
        raise ModelNotFoundError(f"{what} model folder {path}: not found. " + _folder_hint(option, default))
    return spec, False


def _processor_config(source: str, local: bool) -> dict:
    if local:
        return read_preprocessor_config(Path(source) / PROCESSOR_FILE)
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, PROCESSOR_FILE, local_files_only=offline())
        return read_preprocessor_config(Path(path))
    except Exception:  # a missing or unreachable processor config falls back to defaults
        return {}


def _from_pretrained(cls, source: str, local: bool, what: str, option: str, **kwargs):
    """``cls`` from a folder or the hub through the package's one loader (a damaged file is named),
    keeping transformers' own weight-format choice; errors carry the evaluator's hints."""
    try:
        return load_pretrained(cls, source, safetensors_only=False, local_files_only=local or offline(), **kwargs)
    except LoadError as err:
        reason = err.reason
        if local:
            raise ModelNotFoundError(f"{what} model folder {source}: cannot be loaded ({reason}).") from err
        where = ("from the local Hugging Face cache (HF_HUB_OFFLINE is set, so nothing is downloaded)"
                 if offline() else "from the Hugging Face hub or its local cache")
        raise ModelNotFoundError(f"{what} model '{source}' could not be loaded {where}: {reason}. "
                                 + _hint(source, option)) from err


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA if available, else CPU; anything else must be a valid torch device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"--device {device!r}: not a torch device ({err})") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def _batches(items: Sequence, batch_size: int):
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


class _Extractor(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, model_id: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.model_id = model_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_features(pixel_values)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike], batch_size: int = 16) -> torch.Tensor:
        """Images (PIL or paths) -> float32 CPU embeddings ``[N, D]``, computed in batches."""
        chunks = [self.image_features(self.preprocess(chunk).to(self.device, self.dtype)).float().cpu()
                  for chunk in _batches(list(images), batch_size)]
        if not chunks:
            raise ValueError("embed_images: no images")
        return torch.cat(chunks)

    def describe(self) -> dict:
        return {"id": self.model_id, "class": type(self.model).__name__,
                "dtype": str(self.dtype).replace("torch.", ""), "preprocess": self.preprocess.describe()}


class DinoExtractor(_Extractor):
    """DINO image embeddings: CLS token of a ``transformers.ViTModel``'s ``last_hidden_state``."""

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_DINO, device=None, dtype=torch.float32,
                        option: str = "--dino-model") -> DinoExtractor:
        from transformers import ViTModel

        source, local = resolve_source(name_or_path, "DINO", option, DEFAULT_DINO)
        model = _from_pretrained(ViTModel, source, local, "DINO", option,
                                 add_pooling_layer=False)
        preprocess = build_preprocess(_processor_config(source, local), int(model.config.image_size),
                                      IMAGENET_MEAN, IMAGENET_STD)
        return cls(model.to(device=resolve_device(device), dtype=dtype), preprocess, str(name_or_path))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


class ClipExtractor(_Extractor):
    """CLIP projected image and text embeddings from a ``transformers.CLIPModel`` and its tokenizer."""

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, model_id: str, tokenizer):
        super().__init__(model, preprocess, model_id)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_CLIP, device=None, dtype=torch.float32,
                        option: str = "--clip-model") -> ClipExtractor:
        from transformers import AutoTokenizer, CLIPModel

        source, local = resolve_source(name_or_path, "CLIP", option, DEFAULT_CLIP)
        model = _from_pretrained(CLIPModel, source, local, "CLIP", option)
        tokenizer = _from_pretrained(AutoTokenizer, source, local, "CLIP tokenizer", option)
        size = int(model.config.vision_config.image_size)
        preprocess = build_preprocess(_processor_config(source, local), size, CLIP_MEAN, CLIP_STD)
        model = model.to(device=resolve_device(device), dtype=dtype)
        return cls(model, preprocess, str(name_or_path), tokenizer)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return self.model.visual_projection(pooled)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.model.text_projection(pooled)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Prompts -> float32 CPU embeddings ``[N, D]`` (truncated to the model's context length)."""
        max_length = int(self.model.config.text_config.max_position_embeddings)
        chunks = []
        for chunk in _batches(list(texts), batch_size):
            tokens = self.tokenizer(list(chunk), padding=True, truncation=True, max_length=max_length,
                                    return_tensors="pt")
            chunks.append(self.text_features(tokens["input_ids"].to(self.device),
                                             tokens["attention_mask"].to(self.device)).float().cpu())
        if not chunks:
            raise ValueError("embed_texts: no texts")
        return torch.cat(chunks)


def load_extractors(dino_model: str = DEFAULT_DINO, clip_model: str = DEFAULT_CLIP, device=None,
                    dtype=torch.float32) -> tuple[DinoExtractor, ClipExtractor]:
    """Load both extractors once (a sweep reuses them across runs)."""
    return (DinoExtractor.from_pretrained(dino_model, device=device, dtype=dtype),
            ClipExtractor.from_pretrained(clip_model, device=device, dtype=dtype))
