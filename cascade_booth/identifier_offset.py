"""A learned offset on the identifier's text states: stage one may move [V]'s T5 states, not only the UNet.

The paper (section 4.2) binds the subject to a fixed rare token through the UNet alone. On the world that
binds its shape, yet carries its colour into a new context in only about half of the renders, while a
colour word in the same slot ("a red bowl on the beach") carries it into every context: the pretrained UNet
reads attributes from the states at that position. With ``identifier.offset_lr`` > 0 stage one also trains
one vector, the width of the text encoder's states, added at [V]'s token positions of every prompt that
has [V] (in training the instance prompt, at render every filled prompt). Class prompts have no [V], so
the prior term is untouched. The T5 states stay precomputed: the encoder never runs during training, so
IF's 4.8B T5 still never shares memory with the UNet. (Textual inversion, Gal et al. 2022, learns a token's
input embedding through the encoder instead; "pivotal tuning" trains one with the UNet's adapter.)

Each moved state keeps its own norm (``shift_states``): T5's final RMS norm puts every state the UNet was
trained on at one norm (8 in the world's T5, whose scale is 1). A freely added offset leaves that sphere: after
the world preset's 600 steps [V]'s state had norm 8.2-9.2 (six subjects), and when the offset trained alone
first (200 steps) 13-14, where the renders lost their context (a larger key takes the cross-attention from
the context's words). Runs made before this rule (no ``identifier_offset: "keep-norm"`` in their stage-one
record) render with the plain sum they were trained with.

The run keeps the vector in ``RUN/base/identifier_offset.safetensors`` (one tensor of that name); ``render``
applies it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cascade_booth.errors import InputError
from cascade_booth.identifier import PLACEHOLDER, preprocess_prompt
from cascade_booth.safeload import load_state_dict

OFFSET_NAME = "identifier_offset"  # the stage's trained extra (trainer.Extra) and its file in RUN/base
OFFSET_FILE = f"{OFFSET_NAME}.safetensors"
KEEP_NORM = "keep-norm"  # stage one's record: how its offset applies (shift_states); absent in older runs: a sum


class IdentifierOffset(torch.nn.Module):
    """``shift_states`` with a trained offset ([B, L, d] states, [L] or [B, L] mask)."""

    def __init__(self, dim: int):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(dim))  # zero: training starts from the paper's [V]

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # the states may sit on the CPU until the batch moves: .to keeps the graph back to the parameter
        return shift_states(states, mask, self.offset.to(states.device, states.dtype))


def shift_states(states: torch.Tensor, mask: torch.Tensor, offset: torch.Tensor, keep_norm: bool = True
                 ) -> torch.Tensor:
    """``states + offset`` at the positions ``mask`` marks, each such state then scaled back to its own norm
    (``keep_norm``; the module docstring says why); every other position is left as it is."""
    where = mask.to(torch.bool).unsqueeze(-1)
    moved = states + where.to(states.dtype) * offset
    if not keep_norm:  # runs trained before the rule
        return moved
    kept = moved * (states.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return torch.where(where, kept, states)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(preprocess_prompt(text), add_special_tokens=False).input_ids if text.strip() else []


def identifier_mask(tokenizer, template: str, identifier: str, length: int) -> torch.Tensor:
    """Which of the ``length`` token positions of ``template`` (with [V] filled) hold the identifier's pieces.

    T5's sentencepiece never joins pieces across a space, so the words before each [V] count its first
    position; the pieces found there are checked against the filled prompt's own tokens.
    """
    parts = template.split(PLACEHOLDER)
    full = _ids(tokenizer, identifier.join(parts))
    mask = torch.zeros(length, dtype=torch.bool)
    for i in range(1, len(parts)):
        before = identifier.join(parts[:i])
        start, through = len(_ids(tokenizer, before)), _ids(tokenizer, before + identifier)
        end = len(through)
        if end == start or through != full[:end]:
            raise InputError(f"prompt '{template}': the identifier '{identifier}' merges with the text around "
                             f"{PLACEHOLDER} for the text encoder; write {PLACEHOLDER} as a word of its own")
        mask[start:min(end, length)] = True
    return mask


def load_offset(path: Path) -> torch.Tensor:
    """The run's offset vector [d]; a damaged file is one line naming it."""
    state = load_state_dict(path)
    if set(state) != {OFFSET_NAME} or state[OFFSET_NAME].dim() != 1:
        raise InputError(f"{path} is not an identifier offset (expected one 1-D tensor '{OFFSET_NAME}')")
    return state[OFFSET_NAME]


__all__ = ["KEEP_NORM", "OFFSET_FILE", "OFFSET_NAME", "IdentifierOffset", "identifier_mask", "load_offset",
           "shift_states"]
