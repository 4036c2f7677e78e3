"""The learned identifier offset (``identifier.offset_lr``, ``cascade_booth.identifier_offset``), on the tiny cascade.

Checked by breaking it on purpose while writing: the offset left out of the optimizer, the render skipping
it (or adding it to stage two), a checkpoint without it, a mask one token off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from test_mechanisms import _t5_states, spy_text_states  # T5 computed directly; the UNets' inputs

from cascade_booth import runner
from cascade_booth.errors import InputError
from cascade_booth.identifier_offset import KEEP_NORM, OFFSET_FILE, OFFSET_NAME, identifier_mask, shift_states
from cascade_booth.models import resolve_model
from cascade_booth.runner import RenderRequest
from cascade_booth.text import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a [V] clock in the jungle"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("tiny", 1))


def _pieces(tokenizer, text: str, mask: torch.Tensor) -> list[str]:
    ids = tokenizer(text, padding="max_length", max_length=len(mask), add_special_tokens=True).input_ids
    return tokenizer.convert_ids_to_tokens([i for i, m in zip(ids, mask.tolist(), strict=True) if m])


def test_mask_marks_the_identifier_pieces_wherever_v_stands(tokenizer):
    mask = identifier_mask(tokenizer, PROMPT, "xqzvk", 77)
    assert _pieces(tokenizer, "a xqzvk clock in the jungle", mask) == ["▁xq", "zvk"]  # two pieces, both marked
    assert mask.nonzero().flatten().tolist() == [1, 2]
    mask = identifier_mask(tokenizer, "[V] on a (xqzvk) table, [V] again", "xqzvk", 77)
    assert _pieces(tokenizer, "xqzvk on a (xqzvk) table, xqzvk again", mask) == ["▁xq", "zvk"] * 2
    assert mask.nonzero().flatten().tolist()[:2] == [0, 1]  # the first [V]; not the written-out word inside ()
    assert not identifier_mask(tokenizer, "a clock in the jungle", "xqzvk", 77).any()  # a class prompt


def test_mask_refuses_an_identifier_that_merges_with_its_neighbour(tokenizer):
    assert tokenizer.tokenize("a xqzvk") != tokenizer.tokenize("a xqzv") + ["k"]  # "xqzv" + "k" reads differently
    with pytest.raises(InputError, match="merges with the text around"):
        identifier_mask(tokenizer, "a [V]k clock", "xqzv", 77)


def _prepared(subject: Path, folder: Path, steps: int, **base):
    from cascade_booth.session import TrainRequest
    from stages.base import prepare

    cfg = tiny_config(steps=steps, lr=1e-3, **base)
    cfg.prior.enabled = False
    cfg.identifier.offset_lr = 1e-2
    ctx, job, _ = prepare(TrainRequest(subject=subject, class_noun="clock", run=folder, config=cfg))
    ctx.run.unlock()
    return job, cfg


def test_a_step_moves_the_offset_at_its_own_learning_rate(clock_subject, tmp_path):
    from cascade_booth.trainer import Callbacks, train

    job, cfg = _prepared(clock_subject, tmp_path / "run", steps=1)
    offset = job.extras[OFFSET_NAME].param
    assert not offset.any() and job.identifier_mask.sum() == 1  # starts as the paper's [V]; one rare token
    lrs = []
    train(job, cfg.base, tmp_path / "ckpt", cfg.seed, False, Callbacks(on_step=lambda step, loss, lr: lrs.append(lr)))
    # Adam's first step moves every coordinate by about its group's lr: 1e-2 here, not the LoRA's 1e-3
    moved = offset.detach().abs()
    assert lrs == [1e-3] and moved.min() > 5e-3 and moved.max() < 2e-2


def test_resume_restores_the_offset_bitwise(clock_subject, tmp_path):
    from cascade_booth.trainer import Callbacks, train

    straight, cfg = _prepared(clock_subject, tmp_path / "a", steps=2, checkpoint_every=1)
    train(straight, cfg.base, tmp_path / "a-ckpt", cfg.seed, False, Callbacks())
    first, cfg1 = _prepared(clock_subject, tmp_path / "b", steps=1, checkpoint_every=1)
    train(first, cfg1.base, tmp_path / "b-ckpt", cfg1.seed, False, Callbacks())
    assert (tmp_path / "b-ckpt" / "step-1" / "extras.safetensors").exists()
    resumed, cfg2 = _prepared(clock_subject, tmp_path / "c", steps=2, checkpoint_every=1)
    train(resumed, cfg2.base, tmp_path / "b-ckpt", cfg2.seed, True, Callbacks())
    a, b = straight.extras[OFFSET_NAME].param, resumed.extras[OFFSET_NAME].param
    assert a.any() and torch.equal(a, b)


@pytest.fixture(scope="module")
def offset_run(tmp_path_factory) -> Path:
    from conftest import clock_photos

    from cascade_booth.session import TrainRequest
    from stages.base import run as train_base

    subject = clock_photos(tmp_path_factory.mktemp("subject"))
    folder = tmp_path_factory.mktemp("runs") / "offset"
    cfg = tiny_config(steps=2, lr=1e-3)
    cfg.prior.enabled = False
    cfg.identifier.offset_lr = 0.1
    train_base(TrainRequest(subject=subject, class_noun="clock", run=folder, config=cfg))
    return folder


def _identifier_positions(tokenizer, filled: str, identifier: str) -> torch.Tensor:
    """[77] bool: where the identifier's (first) piece stands in the tokenized prompt, computed apart from the mask."""
    ids = tokenizer(filled, padding="max_length", max_length=77).input_ids
    return torch.tensor(ids) == tokenizer.convert_tokens_to_ids(tokenizer.tokenize(identifier))[0]


def test_render_adds_the_offset_to_stage_one_only(offset_run, tmp_path, monkeypatch, tokenizer):
    meta = json.loads((offset_run / "run.json").read_text())
    assert OFFSET_FILE in meta["stages"]["base"]["files"]
    offset = load_file(str(offset_run / "base" / OFFSET_FILE))[OFFSET_NAME]
    assert offset.abs().max() > 0.1  # two steps at lr 0.1 (the LoRA trains at 1e-3)
    seen = spy_text_states(monkeypatch)
    runner.render_run(RenderRequest(run=offset_run, prompts=[PROMPT], sr=True, steps=1, num_images=1,
                                    class_prompts=True, out=tmp_path / "out", warn=lambda message: None))
    assert [len(calls) for calls in seen.values()] == [2, 2]  # one step for each prompt, in each stage
    filled, class_prompt = PROMPT.replace("[V]", meta["identifier"]), "a clock in the jungle"
    where = _identifier_positions(tokenizer, filled, meta["identifier"])
    assert where.sum() == 1
    assert meta["stages"]["base"]["identifier_offset"] == KEEP_NORM
    plain, plain_class = _t5_states([filled, class_prompt])
    text, text_class = (call.chunk(2)[1][0] for call in seen["base"])  # guidance: the conditional half
    moved = plain[where][0] + offset  # the sum, back at the norm of [V]'s own state
    assert torch.allclose(text[where][0], moved * plain[where][0].norm() / moved.norm(), atol=1e-5)
    assert not torch.allclose(text[where][0], plain[where][0], atol=1e-2)
    assert torch.allclose(text[~where], plain[~where], atol=1e-5)  # every other token as T5 gave it
    assert torch.allclose(text_class, plain_class, atol=1e-5)  # no [V], no offset: the prior's prompt
    assert torch.allclose(seen["sr"][0].chunk(2)[1][0], plain, atol=1e-5)  # stage two never saw the offset


def test_a_run_made_before_the_norm_rule_renders_with_the_plain_sum(offset_run, tmp_path, monkeypatch, tokenizer):
    meta = json.loads((offset_run / "run.json").read_text())
    old = tmp_path / "old-run"
    shutil.copytree(offset_run, old)
    del meta["stages"]["base"]["identifier_offset"]  # what run.json held before the rule
    (old / "run.json").write_text(json.dumps(meta))
    offset = load_file(str(old / "base" / OFFSET_FILE))[OFFSET_NAME]
    seen = spy_text_states(monkeypatch)
    runner.render_run(RenderRequest(run=old, prompts=[PROMPT], sr=False, steps=1, num_images=1,
                                    out=tmp_path / "out", warn=lambda message: None))
    filled = PROMPT.replace("[V]", meta["identifier"])
    where = _identifier_positions(tokenizer, filled, meta["identifier"])
    (plain,) = _t5_states([filled])
    assert torch.allclose(seen["base"][0].chunk(2)[1][0][where][0], plain[where][0] + offset, atol=1e-5)


def test_shift_states_keeps_the_norm_of_each_moved_state_and_leaves_the_rest():
    states = torch.randn(2, 5, 8)
    mask = torch.tensor([False, True, True, False, False])
    offset = 10 * torch.randn(8)
    shifted = shift_states(states, mask, offset)
    assert torch.allclose(shifted.norm(dim=-1), states.norm(dim=-1))
    assert torch.equal(shifted[:, ~mask], states[:, ~mask])
    direction = torch.nn.functional.normalize(states[:, mask] + offset, dim=-1)
    assert torch.allclose(torch.nn.functional.normalize(shifted[:, mask], dim=-1), direction, atol=1e-6)
    assert torch.allclose(shift_states(states, mask, offset, keep_norm=False)[:, mask], states[:, mask] + offset)
