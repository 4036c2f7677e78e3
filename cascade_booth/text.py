"""Precomputed T5 prompt embeddings, cached on disk; the encoder is freed before any UNet trains.

IF's text encoder is T5-XXL (about 4.8B parameters): loading it once per prompt set and keeping only
the [77, d] states is what lets stage one fit next to the UNet. We encode like IF's pipeline with
caption cleaning off: lower-case, max length 77, padding to max length, attention mask passed to T5.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cascade_booth.identifier import preprocess_prompt
from cascade_booth.models import load_pretrained, model_fingerprint
from cascade_booth.runfolder import atomic_path

MAX_LENGTH = 77


def _key(model_path: Path, prompt: str) -> str:
    raw = f"{model_fingerprint(model_path)}|{MAX_LENGTH}|{preprocess_prompt(prompt)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


class TextEmbeddings:
    """Prompt -> T5 states [77, d] (float32 on CPU), looked up in ``cache/embeddings/``."""

    def __init__(self, model_path: Path, cache_root: Path):
        self.model_path = model_path
        self.folder = cache_root / "embeddings"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._memo: dict[str, torch.Tensor] = {}

    def _file(self, prompt: str) -> Path:
        return self.folder / f"{_key(self.model_path, prompt)}.safetensors"

    def _missing(self, prompts: list[str]) -> list[str]:
        return sorted({p for p in prompts if not self._file(p).exists()})

    def ensure(self, prompts: list[str], device: str | torch.device = "cpu", batch_size: int = 8) -> None:
        """Encode the prompts that are not cached yet (loads T5 only if needed, frees it after).

        Processes sharing the cache (the ranks of one launch, or two runs) take turns on an ``flock``:
        the first encodes, the others then find the files and never load T5. No collective runs while
        the lock is held, so ranks cannot deadlock on it.
        """
        if not self._missing(prompts):
            return
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            missing = self._missing(prompts)
            if missing:
                self._encode_all(missing, device, batch_size)

    def _encode_all(self, missing: list[str], device: str | torch.device, batch_size: int) -> None:
        from transformers import T5EncoderModel, T5Tokenizer

        tokenizer = T5Tokenizer.from_pretrained(self.model_path / "tokenizer")
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        encoder = load_pretrained(T5EncoderModel, self.model_path / "text_encoder", torch_dtype=dtype).to(device)
        encoder.eval()
        try:
            for i in range(0, len(missing), batch_size):
                chunk = missing[i : i + batch_size]
                states = self._encode(tokenizer, encoder, chunk, device)
                for prompt, state in zip(chunk, states, strict=True):
                    with atomic_path(self._file(prompt)) as tmp:
                        save_file({"embeds": state.contiguous()}, str(tmp), metadata={"prompt": prompt})
        finally:
            del encoder
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @staticmethod
    @torch.no_grad()
    def _encode(tokenizer, encoder, prompts: list[str], device) -> torch.Tensor:
        tokens = tokenizer(
            [preprocess_prompt(p) for p in prompts], padding="max_length", max_length=MAX_LENGTH,
            truncation=True, add_special_tokens=True, return_tensors="pt",
        )
        out = encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
        return out.float().cpu()

    def get(self, prompt: str) -> torch.Tensor:
        if prompt not in self._memo:
            path = self._file(prompt)
            if not path.exists():
                self.ensure([prompt])
            self._memo[prompt] = load_file(str(path))["embeds"]
        return self._memo[prompt]

    def stack(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.get(p) for p in prompts])
