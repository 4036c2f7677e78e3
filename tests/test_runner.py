"""The runner: [V] prompts, PNG metadata + sidecars, grids, fixed-noise variations, stages and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cascade_booth import runner
from cascade_booth.cli import main
from cascade_booth.errors import InputError, ModelNotFoundError, RunError
from cascade_booth.pngmeta import read_png_text
from cascade_booth.runner import RenderRequest, render_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy_run(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "checkpoints", "renders"))
    if edit is not None:
        meta = json.loads((dst / "run.json").read_text())
        edit(meta)
        (dst / "run.json").write_text(json.dumps(meta))
    return dst


def _req(run: Path, *prompts: str, **kw) -> RenderRequest:
    return RenderRequest(run=run, prompts=list(prompts), **({"sr": False, "steps": 2, "num_images": 1} | kw))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_prompts_need_v_and_content(stage_one, tmp_path):
    for prompts, message in ((["a clock in the jungle"], r"has no \[V\].*a \[V\] clock"), ([" "], "empty prompt"),
                             (["a [V] clock", ""], "empty prompt"), ([], "no prompts")):
        with pytest.raises(InputError, match=message):
            render_run(_req(stage_one, *prompts))
    with pytest.raises(InputError, match="does not exist"):
        render_run(_req(stage_one, prompts_file=tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="has no prompts"):
        render_run(_req(stage_one, prompts_file=tmp_path / "empty.txt"))
    (tmp_path / "bad.txt").write_text("a [V] clock\na plain clock\n")
    with pytest.raises(InputError, match="a plain clock"):
        render_run(_req(stage_one, prompts_file=tmp_path / "bad.txt"))
    result = CliRunner().invoke(main, ["render", "a clock", "--run", str(stage_one)])
    assert result.exit_code == 2 and "[V]" in result.output and "Traceback" not in result.output
    assert not (stage_one / "renders").exists()  # nothing rendered, nothing written


def test_missing_stages_are_errors(stage_one, tmp_path):
    with pytest.raises(RunError, match="no run.json"):
        render_run(_req(tmp_path / "nothing", "a [V] clock"))
    no_base = _copy_run(stage_one, tmp_path / "no-base", lambda meta: meta.update(stages={}))
    with pytest.raises(RunError, match="train-base"):
        render_run(_req(no_base, "a [V] clock"))
    lost = _copy_run(stage_one, tmp_path / "lost")
    (lost / "base" / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(RunError, match="missing"):
        render_run(_req(lost, "a [V] clock"))


def test_base_only_metadata_sidecars_grid_and_variations(stage_one, tmp_path):
    (tmp_path / "prompts.txt").write_text("a [V] clock in the jungle\n# skipped\n\na [V] clock on the beach\n")
    out = tmp_path / "out"
    paths = render_run(_req(stage_one, "a [V] clock on the beach", prompts_file=tmp_path / "prompts.txt",
                            num_images=2, seed=5, out=out))
    names = [p.name for p in paths]
    assert names == [f"p{i:03d}-seed{5 + j}-{j:02d}.png" for i in range(3) for j in range(2)] + ["grid.png"]
    ident = json.loads((stage_one / "run.json").read_text())["identifier"]
    chunks = read_png_text(out / "p001-seed6-01.png")
    assert chunks["prompt"] == f"a {ident} clock in the jungle"
    assert chunks["prompt_template"] == "a [V] clock in the jungle"
    assert chunks["identifier"] == ident and chunks["seed"] == "6" and chunks["stage"] == "1"
    assert json.loads(chunks["steps"]) == {"base": 2} and json.loads(chunks["guidance"]) == {"base": 7.0}
    assert json.loads(chunks["models"]) == {"base": "tiny"} and chunks["noise_level"] == "null"
    sidecar = json.loads((out / "p001-seed6-01.json").read_text())
    assert sidecar["prompt"] == chunks["prompt"] and sidecar["prompt_template"] == "a [V] clock in the jungle"
    assert sidecar["seed"] == 6 and sidecar["stage_name"] == "base" and sidecar["image"] == "p001-seed6-01.png"
    assert Image.open(out / "p000-seed5-00.png").size == (64, 64)
    assert Image.open(out / "grid.png").size == (2 * 64 + 3 * 2, 3 * 64 + 4 * 2)
    # fixed-noise variations: the same seeds for every prompt, so only the prompt changes an image
    for j, seed in ((0, 5), (1, 6)):
        same, other = _pixels(out / f"p000-seed{seed}-0{j}.png"), _pixels(out / f"p002-seed{seed}-0{j}.png")
        assert np.array_equal(same, other)  # prompts 0 and 2 are the same prompt
        assert np.abs(same - _pixels(out / f"p001-seed{seed}-0{j}.png")).max() > 0
    assert np.abs(_pixels(out / "p000-seed5-00.png") - _pixels(out / "p000-seed6-01.png")).max() > 0
    from cascade_booth.evaluation.inputs import discover_generated

    found, skipped = discover_generated(out)
    assert len(found) == 6 and [p.name for p in skipped] == ["grid.png"]


def test_recorded_variance_mode_is_applied(stage_one, tmp_path, monkeypatch):
    used = []
    original = runner.make_scheduler

    def spy(config, variance, steps, device):
        scheduler = original(config, variance, steps, device)
        used.append(scheduler.config.variance_type)
        return scheduler

    monkeypatch.setattr(runner, "make_scheduler", spy)
    learned = render_run(_req(stage_one, "a [V] clock", out=tmp_path / "learned"))
    assert set(used) == {"learned_range"}
    used.clear()
    fixed_run = _copy_run(stage_one, tmp_path / "fixed", lambda m: m["stages"]["base"].update(variance="fixed"))
    fixed = render_run(_req(fixed_run, "a [V] clock", out=tmp_path / "fixed-out"))
    assert set(used) == {"fixed_small"}
    assert json.loads(read_png_text(fixed[0])["variance_type"]) == {"base": "fixed_small"}
    assert np.abs(_pixels(fixed[0]) - _pixels(learned[0])).max() > 0


def _perturbing_train(job, cfg, root, seed, resume, callbacks):
    """Stands in for the trainer: a visibly non-zero adapter, without minutes of 256 px steps."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in job.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return cfg.steps


def test_sr_falls_back_with_a_warning_then_uses_the_runs_adapter(stage_one, tmp_path, monkeypatch):
    run = _copy_run(stage_one, tmp_path / "run")
    warnings: list[str] = []
    plain = render_run(_req(run, "a [V] clock", sr=True, steps=1, warn=warnings.append, out=tmp_path / "plain"))
    assert len(plain) == 1 and Image.open(plain[0]).size == (256, 256)
    assert len(warnings) == 1 and "no finished stage two" in warnings[0] and "train-sr" in warnings[0]
    meta = json.loads(plain[0].with_suffix(".json").read_text())
    assert meta["stage"] == 2 and meta["weights"]["sr"] is None and meta["noise_level"] == 100

    from stages import sr

    monkeypatch.setattr(sr, "train", _perturbing_train)
    sr.run(sr.SRRequest(run=run, overrides=dict(noise_level=50)))
    warnings.clear()
    tuned = render_run(_req(run, "a [V] clock", sr=True, steps=1, warn=warnings.append, out=tmp_path / "tuned"))
    meta = json.loads(tuned[0].with_suffix(".json").read_text())
    assert warnings == [] and meta["weights"]["sr"] == str(run / "sr" / "pytorch_lora_weights.safetensors")
    assert meta["noise_level"] == 50 and json.loads(read_png_text(tuned[0])["variance"]) == {"base": "learned",
                                                                                              "sr": "learned"}
    assert np.abs(_pixels(tuned[0]) - _pixels(plain[0])).max() > 0

    other = _copy_run(run, tmp_path / "other", lambda m: m["stages"]["sr"].update(base_resolution=32))
    with pytest.raises(RunError, match="another stage one"):
        render_run(_req(other, "a [V] clock", sr=True))
    other = _copy_run(run, tmp_path / "other-model", lambda m: m["stages"]["sr"].update(base_model="x/other-if"))
    with pytest.raises(RunError, match="train-sr"):
        render_run(_req(other, "a [V] clock", sr=True))


def test_stage_three_errors(stage_one, tmp_path):
    with pytest.raises(InputError, match="tiny preset has no"):
        render_run(_req(stage_one, "a [V] clock", sr=True, upscale=True))
    with pytest.raises(InputError, match="--no-sr"):
        render_run(_req(stage_one, "a [V] clock", sr=False, upscale=True))
    hub = _copy_run(stage_one, tmp_path / "hub", lambda m: m["config"]["model"].update(upscaler="nobody/no-upscaler"))
    with pytest.raises(ModelNotFoundError, match="nobody/no-upscaler"):
        render_run(_req(hub, "a [V] clock", sr=True, upscale=True))


def test_cli_render_base_only(stage_one, tmp_path):
    result = CliRunner().invoke(main, ["render", "a [V] clock", "--run", str(stage_one), "--no-sr", "--steps", "1",
                                       "--out", str(tmp_path / "cli"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("p000-seed3-00.png")


def test_png_chunks_and_sidecar_keep_any_prompt(tmp_path):
    from cascade_booth.pngmeta import save_png

    meta = {"prompt": "ein sd Wecker in München, 東京", "seed": 3, "steps": {"base": 2}}
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", meta)
    chunks = read_png_text(path)
    assert chunks["prompt"] == meta["prompt"] and chunks["seed"] == "3" and json.loads(chunks["steps"]) == {"base": 2}
    assert json.loads(path.with_suffix(".json").read_text()) == {"image": "x.png", **meta}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.png"]  # no temporary files left


def test_class_prompts_follow_the_instance_prompts_and_are_marked(stage_one, tmp_path):
    from cascade_booth.runner import plan_render

    req = _req(stage_one, "a [V] clock on the beach", "a [V] clock", out=tmp_path / "r", class_prompts=True)
    plan = plan_render(req)
    assert plan.templates[2:] == plan.prompts[2:] == ["a clock on the beach", "a clock"]
    assert plan.kinds == ["instance", "instance", "class", "class"]
    assert plan_render(_req(stage_one, "a [V] clock", out=tmp_path / "r")).kinds == ["instance"]
