"""tools/pretrain_world_evaluators.py: a killed run resumes to the weights of an unbroken one, and a later segment
carries on from the shipped weights and records itself in their pretrain.json."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

import pytest
import torch
from helpers_tools import load_tool

from cascade_booth.world.cascade import SHIPPED


@pytest.fixture
def tool(tmp_path, monkeypatch):
    """The script with a 4-design pool, its shipped folder a copy of the shipped CLIP, its state under tmp_path."""
    module = load_tool("pretrain_world_evaluators")
    monkeypatch.setenv("CASCADE_BOOTH_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "models"
    shutil.copytree(SHIPPED / "clip", shipped / "clip")
    monkeypatch.setattr(module, "SHIPPED", shipped)
    monkeypatch.setattr(module, "train_pool", lambda: module.pool("tiny", [0, 1, 2, 3], 0))
    return module


def train(tool, steps: int, **flags) -> dict[str, torch.Tensor]:
    args = argparse.Namespace(steps=steps, lr=None, init_from_shipped=False, save_every=1, threads=1)
    vars(args).update(flags)
    tool.train_clip(args)
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tool.SHIPPED / "clip").state_dict()


def test_a_killed_clip_run_resumes_to_the_weights_of_an_unbroken_one(tool, monkeypatch):
    straight = train(tool, 3)
    shutil.rmtree(tool.state_dir("clip"))
    calls = 0
    real_fit = tool.fit

    def killed_after_two(name, model, loss, save, args, *rest, **kw):
        def counted(step):
            nonlocal calls
            calls += 1
            if calls == 3:
                raise KeyboardInterrupt  # the third step of the first run never finishes
            return loss(step)
        return real_fit(name, model, counted, save, args, *rest, **kw)

    monkeypatch.setattr(tool, "fit", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(tool, 3)
    assert torch.load(tool.state_dir("clip") / "state.pt", weights_only=False)["step"] == 2
    resumed = train(tool, 3)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert json.loads((tool.SHIPPED / "clip" / "pretrain.json").read_text())["segments"] == [3]


def test_a_later_segment_starts_from_the_shipped_clip_and_records_itself(tool, monkeypatch):
    from transformers import CLIPModel

    shipped = json.loads((tool.SHIPPED / "clip" / "pretrain.json").read_text())
    tiny_pool = tool.train_pool
    monkeypatch.setattr(tool, "train_pool", lambda: pytest.fail("refused only after rendering the pool"))
    monkeypatch.setattr(sys, "argv", ["pretrain_world_evaluators.py", "--model", "clip", "--init-from-shipped",
                                      "--steps", str(shipped["steps"])])
    with pytest.raises(SystemExit, match=f"already at step {shipped['steps']}"):  # a later segment must go past it
        tool.main()
    monkeypatch.setattr(tool, "train_pool", tiny_pool)
    before = CLIPModel.from_pretrained(tool.SHIPPED / "clip").state_dict()
    after = train(tool, shipped["steps"] + 2, init_from_shipped=True, lr=1e-4)
    info = json.loads((tool.SHIPPED / "clip" / "pretrain.json").read_text())
    assert info["segments"] == [*shipped["segments"], shipped["steps"] + 2]
    assert info["lrs"] == [*shipped["lrs"], 1e-4] and info["steps"] == shipped["steps"] + 2
    assert info["wall_hours"] is None  # the first segment's wall time was never recorded ...
    assert info["wall_hours_per_segment"][:-1] == shipped["wall_hours_per_segment"]
    assert info["wall_hours_per_segment"][-1] >= 0  # ... this one was
    assert info["note"] == shipped["note"]
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all((before[k] - after[k]).abs().max() < 0.05 for k in before)  # moved from the shipped weights
