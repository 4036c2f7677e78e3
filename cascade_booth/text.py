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
from safetensors.torch import save_file

from cascade_booth.devices import frozen_dtype
from cascade_booth.errors import InputError
from cascade_booth.identifier import (
    check_identifier,
    class_prompt,
    identifier_pieces,
    identifier_warnings,
    instance_template,
    preprocess_prompt,
)
from cascade_booth.models import model_fingerprint
from cascade_booth.runfolder import atomic_path
from cascade_booth.safeload import load_pretrained, load_state_dict

MAX_LENGTH = 77  # IF's T5 context, end token included: longer prompts would be cut silently


def load_tokenizer(model_path: Path):
    """The model's T5 tokenizer (``model_path/tokenizer``); a damaged one is one line naming it."""
    from transformers import T5Tokenizer

    return load_pretrained(T5Tokenizer, model_path / "tokenizer", safetensors_only=False)


def shorten(text: str, limit: int = 60) -> str:
    """``text`` for a one-line message: a 10,000-character prompt is shown by its start."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_prompt(tokenizer, prompt: str, what: str) -> list[str]:
    """Refuse a prompt the text encoder would truncate; return a warning for words it cannot spell.

    ``what`` names the prompt for the user (the flag or the prompt itself).
    """
    ids = tokenizer(preprocess_prompt(prompt), add_special_tokens=True).input_ids
    if len(ids) > MAX_LENGTH:
        raise InputError(f"{what} is {len(ids)} tokens long for the text encoder; the limit is {MAX_LENGTH} "
                         "(IF's T5 context, end token included): shorten it")
    unk = tokenizer.unk_token_id
    unknown = [] if unk is None else [word for word in preprocess_prompt(prompt).split()
                                      if unk in tokenizer(word, add_special_tokens=False).input_ids]
    if not unknown:
        return []
    return [f"{what}: the text encoder cannot spell {', '.join(repr(w) for w in unknown)} and reads "
            f"{tokenizer.unk_token} (unknown) in its place; use words it knows"]


def check_prompts(tokenizer, templates: list[str], prompts: list[str]) -> list[str]:
    """:func:`check_prompt` for each prompt, named as the user wrote it (``templates``, with [V])."""
    return [note for template, prompt in zip(templates, prompts, strict=True)
            for note in check_prompt(tokenizer, prompt, f"prompt '{shorten(template)}'")]


def check_training_text(tokenizer, class_noun: str, identifier: str | None,
                        rule: dict[str, int] | None = None) -> list[str]:
    """Check the class noun (and a given identifier) before a training starts; returns warnings.

    The instance prompt "a [V] <class noun>" must fit the text encoder: [V] is one token when chosen
    later, its pieces when given (checked here), added to the class prompt's length.
    """
    what = f"--class-noun '{shorten(class_noun)}'"
    warnings, pieces = [], 1
    if identifier is not None:
        check_identifier(tokenizer, identifier, class_noun, **(rule or {}))
        warnings += identifier_warnings(identifier, tokenizer)
        pieces = len(identifier_pieces(tokenizer, identifier))
    class_text = preprocess_prompt(class_prompt(instance_template(class_noun)))
    n = len(tokenizer(class_text, add_special_tokens=True).input_ids) + pieces
    if n > MAX_LENGTH:
        raise InputError(f"{what} is too long: the instance prompt 'a [V] {shorten(class_noun, 30)}' is {n} tokens "
                         f"for the text encoder; the limit is {MAX_LENGTH} (IF's T5 context): use a short class noun")
    return warnings + check_prompt(tokenizer, class_noun, what)


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
        from transformers import T5EncoderModel

        tokenizer = load_tokenizer(self.model_path)
        dtype = frozen_dtype(device)
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
        for prompt in prompts:  # the last guard: the entry points refuse long prompts before any work
            check_prompt(tokenizer, prompt, f"prompt '{shorten(prompt)}'")
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
            try:
                self._memo[prompt] = load_state_dict(path)["embeds"]
            except (InputError, KeyError):  # a damaged cache entry is ours: encode it again
                path.unlink(missing_ok=True)
                self.ensure([prompt])
                self._memo[prompt] = load_state_dict(path)["embeds"]
        return self._memo[prompt]

    def stack(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.get(p) for p in prompts])
