"""The unique identifier [V] (paper section 4.2, "Rare-token Identifiers").

The paper samples a rare token from T5's vocabulary (rank 5000-10000, at most 3 characters, no
spaces) so that the identifier has a weak prior in both the language and the diffusion model. Ours
is deterministic for a seed, checked to round-trip to exactly one token inside "a [V] <class noun>"
after IF's prompt preprocessing (lower-case), and scaled to small vocabularies (the tiny cascade).
"""

from __future__ import annotations

import random

from cascade_booth.errors import InputError

T5_VOCAB = 32100  # T5 v1.1 sentencepiece vocabulary size (without added sentinels)
PLACEHOLDER = "[V]"


def preprocess_prompt(text: str) -> str:
    """IF's prompt preprocessing when caption cleaning is off (diffusers ``_text_preprocessing``)."""
    return text.lower().strip()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(preprocess_prompt(text), add_special_tokens=False).input_ids


def is_single_token(tokenizer, token: str, class_noun: str) -> bool:
    """True when ``token`` is one vocabulary entry, alone and inside ``a <token> <class_noun>``."""
    if not token or any(ch.isspace() for ch in token) or token != preprocess_prompt(token):
        return False
    alone = _ids(tokenizer, token)
    if len(alone) != 1:
        return False
    return _ids(tokenizer, f"a {token} {class_noun}") == _ids(tokenizer, "a") + alone + _ids(tokenizer, class_noun)


def _scaled_range(tokenizer, rank_min: int, rank_max: int) -> range:
    vocab = tokenizer.sp_model.get_piece_size() if hasattr(tokenizer, "sp_model") else len(tokenizer) - 100
    scale = min(1.0, vocab / T5_VOCAB)
    return range(int(rank_min * scale), max(int(rank_max * scale), int(rank_min * scale) + 1))


def candidate_identifiers(tokenizer, rank_min: int, rank_max: int, max_chars: int) -> list[str]:
    """Word-initial, alphabetic, lower-case vocabulary pieces of 1..max_chars characters in the rank range."""
    out = []
    for rank in _scaled_range(tokenizer, rank_min, rank_max):
        piece = tokenizer.convert_ids_to_tokens(rank)
        if not piece or not piece.startswith("▁"):
            continue
        text = piece[1:]
        if 0 < len(text) <= max_chars and text.isascii() and text.isalpha() and text.islower():
            out.append(text)
    return out


def choose_identifier(
    tokenizer, class_noun: str, seed: int, rank_min: int = 5000, rank_max: int = 10000, max_chars: int = 3
) -> str:
    """Pick [V] deterministically for ``seed`` among the candidates that round-trip to one token."""
    candidates = candidate_identifiers(tokenizer, rank_min, rank_max, max_chars)
    random.Random(seed).shuffle(candidates)
    noun_words = set(preprocess_prompt(class_noun).split())
    for token in candidates:
        if token not in noun_words and is_single_token(tokenizer, token, class_noun):
            return token
    raise InputError(
        f"no rare single-token identifier in vocabulary ranks {rank_min}-{rank_max} (<= {max_chars} chars); "
        "widen [identifier] or pass --identifier"
    )


def check_identifier(tokenizer, token: str, class_noun: str) -> str:
    """Validate a user-given identifier; returns it or raises naming the problem."""
    if not is_single_token(tokenizer, token, class_noun):
        pieces = tokenizer.convert_ids_to_tokens(_ids(tokenizer, token)) if token.strip() else []
        raise InputError(
            f"identifier '{token}' is not a single lower-case token of the text encoder "
            f"(it splits into {pieces}); pick another or omit --identifier to choose one automatically"
        )
    return token


def instance_prompt(identifier: str, class_noun: str) -> str:
    return f"a {identifier} {class_noun}"


def class_prompt(class_noun: str) -> str:
    return f"a {class_noun}"


def fill_identifier(prompt: str, identifier: str) -> str:
    """Replace ``[V]`` with the identifier; a prompt without it is an error with a hint."""
    if not prompt.strip():
        raise InputError("empty prompt")
    if PLACEHOLDER not in prompt:
        raise InputError(
            f"prompt '{prompt}' has no {PLACEHOLDER}: write the subject as '{PLACEHOLDER} <class noun>', "
            f"e.g. 'a {PLACEHOLDER} clock in the jungle'"
        )
    return prompt.replace(PLACEHOLDER, identifier)
