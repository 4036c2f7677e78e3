"""The unique identifier [V] (paper section 4.2, "Rare-token Identifiers").

The paper samples a rare token from T5's vocabulary (rank 5000-10000, at most 3 characters, no
spaces) so that the identifier has a weak prior in both the language and the diffusion model. Ours
is deterministic for a seed, checked to round-trip to exactly one token inside "a [V] <class noun>"
after IF's prompt preprocessing (lower-case), and scaled to small vocabularies (the tiny cascade).
"""

from __future__ import annotations

import random
import re

from cascade_booth.errors import InputError

# The paper's ranks are T5's; other vocabularies scale them by size / T5_VOCAB. (T5's tokenizer has
# 32100 entries with its 100 sentinels; the constant stays what it always was so that a seed keeps
# choosing the same identifier, and a resumed run does not see its identifier drift.)
T5_VOCAB = 32100
PLACEHOLDER = "[V]"
TEMPLATE_WORDS = frozenset({"a"})  # the words of "a [V] <class noun>" besides [V] and the noun
# Very common English words: a strong prior in the text encoder is what the rare identifier avoids.
COMMON_WORDS = frozenset("""
a an the of in on at to by for from with and or but not no nor so if as is are was were be been am do does did
has have had it its he she we you they i me my our your his her him them us this that these those who what which
when where why how all any one two new old big out up off yes get got let put say see use way day man men
can may will would could should must shall than then too very just also only some more most own same such
photo image picture""".split())


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
    return len(alone) == 1 and _stays_apart(tokenizer, token, alone, class_noun)


def _stays_apart(tokenizer, token: str, ids: list[int], class_noun: str) -> bool:
    """True when ``token`` (tokenized alone as ``ids``) reads the same inside ``a <token> <class_noun>``."""
    return _ids(tokenizer, f"a {token} {class_noun}") == _ids(tokenizer, "a") + ids + _ids(tokenizer, class_noun)


def vocabulary(tokenizer) -> list[str | None]:
    """The tokenizer's own pieces by id, which is their rank; added tokens (specials, sentinels) are None.

    Read from ``get_vocab()``: the size is that of the real vocabulary, whatever the tokenizer's
    internals (a sentencepiece ``sp_model`` is gone from current transformers) and its added tokens.
    """
    added = set(getattr(tokenizer, "added_tokens_decoder", None) or {})
    own = {index: piece for piece, index in tokenizer.get_vocab().items() if index not in added}
    size = max(own, default=-1) + 1
    return [own.get(index) for index in range(size)]


def _scaled_range(size: int, rank_min: int, rank_max: int) -> range:
    """The ranks to search: as given when the vocabulary holds them (T5, the world tokenizer, whose
    preset names its own range); otherwise the paper's T5 ranks scaled to the vocabulary's size."""
    if rank_max <= size:
        return range(rank_min, max(rank_max, rank_min + 1))
    scale = min(1.0, size / T5_VOCAB)
    low = int(rank_min * scale)
    return range(low, min(size, max(int(rank_max * scale), low + 1)))


def _prompt_words(class_noun: str) -> set[str]:
    return set(TEMPLATE_WORDS) | set(preprocess_prompt(class_noun).split())


def candidate_identifiers(tokenizer, rank_min: int, rank_max: int, max_chars: int) -> list[str]:
    """Word-initial, alphabetic, lower-case pieces of 1..max_chars characters in the (scaled) rank range,
    that are not common words."""
    pieces = vocabulary(tokenizer)
    out = []
    for rank in _scaled_range(len(pieces), rank_min, rank_max):
        piece = pieces[rank]
        if not piece or not piece.startswith("▁"):
            continue
        text = piece[1:]
        if 0 < len(text) <= max_chars and text.isascii() and text.isalpha() and text.islower():
            if text not in COMMON_WORDS:
                out.append(text)
    return out


def choose_identifier(
    tokenizer, class_noun: str, seed: int, rank_min: int = 5000, rank_max: int = 10000, max_chars: int = 3
) -> str:
    """Pick [V] deterministically for ``seed`` among the candidates that round-trip to one token.

    Never a word of the instance prompt or a common word; a vocabulary without any usable piece is
    an error that says so and what to pass instead.
    """
    candidates = candidate_identifiers(tokenizer, rank_min, rank_max, max_chars)
    random.Random(seed).shuffle(candidates)
    taken = _prompt_words(class_noun)
    for token in candidates:
        if token not in taken and is_single_token(tokenizer, token, class_noun):
            return token
    size = len(vocabulary(tokenizer))
    ranks = _scaled_range(size, rank_min, rank_max)
    raise InputError(
        f"no rare single-token identifier in the text encoder's vocabulary ({size} pieces): none of its "
        f"lower-case word pieces of <= {max_chars} chars in ranks {ranks.start}-{ranks.stop - 1} (from "
        f"[identifier] {rank_min}-{rank_max}, scaled to this vocabulary if it is smaller) stays one token in "
        f"'a [V] {class_noun}' without being a common word or a word of the prompt. Pass --identifier with a "
        "rare word that is one token of this vocabulary, or widen [identifier] rank_min/rank_max in the config"
    )


def _omit_hint(tokenizer, class_noun: str, rank_min: int, rank_max: int, max_chars: int) -> str:
    """Advise omitting --identifier only where the automatic search would then succeed."""
    try:
        choose_identifier(tokenizer, class_noun, 0, rank_min, rank_max, max_chars)
    except InputError:
        return "pick a rare word that is one token of this vocabulary (the automatic search finds none in it)"
    return "pick another or omit --identifier to choose one automatically"


def check_identifier(
    tokenizer, token: str, class_noun: str, rank_min: int = 5000, rank_max: int = 10000, max_chars: int = 3
) -> str:
    """Validate a user-given identifier; returns it or raises naming the problem."""
    problem = _identifier_problem(tokenizer, token, class_noun)
    if problem:
        raise InputError(f"{problem}; {_omit_hint(tokenizer, class_noun, rank_min, rank_max, max_chars)}")
    return token


def identifier_pieces(tokenizer, token: str) -> list[str]:
    """The text encoder's pieces of ``token`` after IF's preprocessing: one for the paper's rare token."""
    return tokenizer.convert_ids_to_tokens(_ids(tokenizer, token))


def _identifier_problem(tokenizer, token: str, class_noun: str) -> str | None:
    if not token.strip():
        return "--identifier is empty"
    if any(ch.isspace() for ch in token):
        return f"--identifier '{token}' has white space: [V] is one word (a rare token, or a string of pieces)"
    if token != preprocess_prompt(token):
        return (f"--identifier '{token}' is not lower-case: IF's prompt preprocessing lower-cases it, so the "
                f"text encoder would read '{preprocess_prompt(token)}'; pass that")
    if preprocess_prompt(token) in _prompt_words(class_noun):
        where = "the article 'a' of" if preprocess_prompt(token) in TEMPLATE_WORDS else "a word of the class noun in"
        return (f"--identifier '{token}' is {where} the instance prompt 'a [V] {class_noun}' (it would read "
                f"'a {token} {class_noun}'), so it cannot name the subject")
    ids = _ids(tokenizer, token)
    if tokenizer.unk_token_id in ids:
        return (f"--identifier '{token}' has characters the text encoder cannot spell "
                f"(it reads {tokenizer.convert_ids_to_tokens(ids)})")
    if not _stays_apart(tokenizer, token, ids, class_noun):
        return (f"--identifier '{token}' merges with its neighbours in 'a {token} {class_noun}': the text encoder "
                "reads it differently there")
    return None


def identifier_warnings(token: str, tokenizer=None) -> list[str]:
    """Warnings about a user-given identifier that is allowed but works against the paper's rule (section 4.2):
    a common word, or a string the text encoder splits into several pieces (each with a prior of its own)."""
    notes = []
    if preprocess_prompt(token) in COMMON_WORDS:
        notes.append(f"--identifier '{token}' is a common word: its strong prior in the text encoder works against "
                     "the rare-token identifier of the paper (section 4.2); a rare token personalizes better")
    pieces = identifier_pieces(tokenizer, token) if tokenizer is not None else []
    if len(pieces) > 1:
        notes.append(f"--identifier '{token}' is {len(pieces)} pieces of the text encoder ({', '.join(pieces)}), not "
                     "one rare token: the paper (section 4.2) finds such strings weaker identifiers; omit "
                     "--identifier to pick a rare single token")
    return notes


def instance_prompt(identifier: str, class_noun: str) -> str:
    return f"a {identifier} {class_noun}"


def instance_template(class_noun: str) -> str:
    """The subject's prompt before the identifier is chosen: "a [V] clock"."""
    return f"a {PLACEHOLDER} {class_noun}"


def class_prompt(prompt: str) -> str:
    """A prompt without its identifier: "a [V] dog in the snow" -> "a dog in the snow".

    The prior-preservation class prompt (section 3.3) is that of the instance prompt:
    ``class_prompt(instance_template("clock")) == "a clock"``. Only the white space around [V] is
    folded, so the rest of the prompt stays as written.
    """
    return re.sub(rf"\s*{re.escape(PLACEHOLDER)}\s*", " ", prompt).strip()


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
