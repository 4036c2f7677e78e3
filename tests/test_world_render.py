"""The shipped world cascade through the CLI: render without a run, a world run end to end (issue 7)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from cascade_booth.cli import main
from cascade_booth.world.cascade import SHIPPED


def _invoke(args: list[str]):
    result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output
    return result


def test_shipped_models_load_with_the_diffusers_if_pipelines():
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    listed = json.loads(_invoke(["world", "models", "--json"]).output)
    assert listed["base"] == str(SHIPPED / "base") and listed["sr"] == str(SHIPPED / "sr")
    base = IFPipeline.from_pretrained(listed["base"])
    sr = IFSuperResolutionPipeline.from_pretrained(listed["sr"])
    assert base.unet.config.sample_size == 32 and sr.unet.config.sample_size == 128
    assert base.unet.config.out_channels == 6 and sr.unet.config.in_channels == 6


def test_render_the_pretrained_cascade_without_a_run(tmp_path):
    out = tmp_path / "pretrained"
    result = _invoke(["render", "--config", "world", "a red vase on the beach", "--num-images", "2", "--steps", "3",
                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("p000-*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (128, 128) for p in pngs)
    meta = json.loads(pngs[0].with_suffix(".json").read_text())
    assert meta["prompt"] == "a red vase on the beach" and meta["run"] is None
    assert meta["weights"] == {"base": None, "sr": None}
    low = _invoke(["render", "--config", "world", "a vase", "--no-sr", "--num-images", "1", "--steps", "2",
                   "--out", str(tmp_path / "low")])
    assert low.exit_code == 0 and Image.open(next((tmp_path / "low").glob("p000-*.png"))).size == (32, 32)


@pytest.mark.parametrize("args, message", [
    (["render", "--config", "world", "a [V] vase"], "only a run can fill"),
    (["render", "--config", "world", "--class-prompts", "a vase"], "--class-prompts needs --run"),
    (["render", "a vase"], "needs --run RUN"),
])
def test_render_without_a_run_refuses_what_only_a_run_can_do(args, message):
    result = _invoke(args)
    assert result.exit_code != 0 and message in result.output


def test_world_run_end_to_end_with_class_prompts(tmp_path):
    subject, run = tmp_path / "subject", tmp_path / "run"
    assert _invoke(["world", "subject", "--class", "teapot", "--seed", "1", "--out", str(subject)]).exit_code == 0
    trained = _invoke(["train-base", "--config", "world", "--subject", str(subject), "--class-noun", "teapot",
                       "--run", str(run), "--steps", "2", "--class-images", "2"])
    assert trained.exit_code == 0, trained.output
    assert _invoke(["train-sr", "--config", "world", "--run", str(run), "--steps", "1"]).exit_code == 0
    rendered = _invoke(["render", "--run", str(run), "a [V] teapot in the snow", "--class-prompts",
                        "--num-images", "1", "--steps", "2"])
    assert rendered.exit_code == 0, rendered.output
    metas = [json.loads(p.read_text()) for p in sorted((run / "renders").glob("p*.json"))]
    identifier = json.loads((run / "run.json").read_text())["identifier"]
    assert [(m["kind"], m["prompt"]) for m in metas] == [("instance", f"a {identifier} teapot in the snow"),
                                                          ("class", "a teapot in the snow")]
    assert all(m["width"] == 128 for m in metas)
    scored = _invoke(["evaluate", "--run", str(run), "--subject", str(subject), "--prompts", "dreambench",
                      "--dino-model", "world", "--clip-model", "world", "--no-html"])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["models"]["dino"]["id"] == "world" and metrics["models"]["clip"]["id"] == "world"
    assert 0.0 < metrics["overall"]["real_images"]["dino"] <= 1.0  # real vs real was scored
