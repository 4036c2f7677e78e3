"""Extractors on tiny random models, and the ``evaluate`` command end to end (offline, CPU)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from cascade_booth.errors import InputError, ModelNotFoundError
from cascade_booth.evaluation import metrics
from cascade_booth.evaluation.cli import evaluate
from cascade_booth.evaluation.extractors import ClipExtractor, DinoExtractor, resolve_device
from cascade_booth.evaluation.preprocess import IMAGENET_MEAN
from cascade_booth.evaluation.tiny import build_tiny_models

PROMPTS = ["a xjy clock in the jungle", "a xjy clock in the snow", "a clock in the jungle"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def subject(tmp_path):
    folder = tmp_path / "my_clock"
    folder.mkdir()
    for i in range(3):
        _image(100 + i, (64, 48)).save(folder / f"{i:02d}.jpg")
    return folder


def _write_generated(folder: Path, prompts=PROMPTS, per_prompt=2, stage=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for prompt in prompts:
        for _ in range(per_prompt):
            meta = {"prompt": prompt, "seed": k, **({"stage": stage} if stage is not None else {})}
            path = folder / f"{k:03d}.png"
            if k % 2:  # half with a sidecar JSON, half with a PNG text chunk
                _image(k).save(path)
                path.with_suffix(".json").write_text(json.dumps(meta))
            else:
                info = PngImagePlugin.PngInfo()
                info.add_text("cascade_booth", json.dumps(meta))
                _image(k).save(path, pnginfo=info)
            k += 1
    return folder


def _args(tiny, *extra):
    return ["--dino-model", str(tiny["dino"]), "--clip-model", str(tiny["clip"]), "--device", "cpu", *extra]


# --- extractors -----------------------------------------------------------------------------------

def test_dino_extractor_is_the_cls_token_and_batching_does_not_change_it(tiny):
    from transformers import ViTModel

    dino = DinoExtractor.from_pretrained(str(tiny["dino"]), device="cpu")
    images = [_image(i) for i in range(5)]
    one = dino.embed_images(images, batch_size=1)
    many = dino.embed_images(images, batch_size=4)
    assert one.shape == (5, 32) and torch.allclose(one, many, atol=1e-5)
    model = ViTModel.from_pretrained(tiny["dino"], add_pooling_layer=False).eval()
    with torch.no_grad():
        cls = model(pixel_values=dino.preprocess(images[:2])).last_hidden_state[:, 0]
    assert torch.allclose(one[:2], cls, atol=1e-5)
    assert dino.describe()["id"] == str(tiny["dino"])


def test_clip_extractor_images_and_texts(tiny):
    clip = ClipExtractor.from_pretrained(str(tiny["clip"]), device="cpu")
    img = clip.embed_images([_image(0), _image(0), _image(1)], batch_size=2)
    assert img.shape == (3, 16)
    assert metrics.cosine_similarity_matrix(img[:1], img[1:2]).item() == pytest.approx(1.0, abs=1e-5)
    text = clip.embed_texts(["a clock", "a clock", "a dog in the snow"], batch_size=2)
    assert text.shape == (3, 16)
    assert torch.allclose(text[0], text[1], atol=1e-5) and not torch.allclose(text[0], text[2], atol=1e-3)


def test_missing_processor_config_falls_back_to_defaults(tiny, tmp_path):
    folder = shutil.copytree(tiny["dino"], tmp_path / "dino")
    (folder / "preprocessor_config.json").unlink()
    prep = DinoExtractor.from_pretrained(str(folder), device="cpu").preprocess
    assert prep.mean == IMAGENET_MEAN and prep.crop == 32


def test_missing_models_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download cascade-booth-test/missing"):
        DinoExtractor.from_pretrained("cascade-booth-test/missing", device="cpu")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        ClipExtractor.from_pretrained("cascade-booth-test/missing", device="cpu")
    with pytest.raises(ModelNotFoundError, match=r"nope: not found.*--dino-model"):
        DinoExtractor.from_pretrained(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        ClipExtractor.from_pretrained(str(tmp_path), device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="--device 'gpu0'"):
        resolve_device("gpu0")


# --- evaluate command -----------------------------------------------------------------------------

def test_evaluate_end_to_end(tiny, subject, tmp_path):
    generated = _write_generated(tmp_path / "gen")
    Image.new("RGB", (8, 8)).save(generated / "grid.png")  # no prompt: skipped and recorded
    out = tmp_path / "out"
    result = CliRunner().invoke(evaluate, _args(tiny, "--generated", str(generated), "--subject",
                                                str(subject), "--class-noun", "clock", "--out", str(out),
                                                "--batch-size", "3"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "DINO" in result.output and "1 PNG(s) without a prompt skipped" in result.output
    report = json.loads((out / "metrics.json").read_text())
    settings = report["settings"]
    assert settings["identifier"] == "xjy" and settings["prompts"] == "dreambench-object"
    assert settings["div_metric"] == "1-dino-cosine" and settings["skipped_files"][0].endswith("grid.png")
    assert report["models"]["dino"]["id"] == str(tiny["dino"])
    overall = report["overall"]
    assert (overall["n_instance_images"], overall["n_class_images"]) == (4, 2)
    assert len(report["per_image"]) == 6 and len(report["coverage"]["missing_templates"]) == 23
    for key in ("dino", "clip_i", "clip_t", "pres", "div"):
        assert isinstance(overall[key], float) and -1.0 <= overall[key] <= 2.0
    # DINO equals the metric on embeddings computed independently.
    dino = DinoExtractor.from_pretrained(str(tiny["dino"]), device="cpu")
    inst = [row["path"] for row in report["per_image"] if row["kind"] == "instance"]
    real = sorted(subject.iterdir())
    expected = metrics.dino_score(dino.embed_images(inst), dino.embed_images(real))
    assert overall["dino"] == pytest.approx(expected, abs=1e-5)
    assert (out / "report.md").read_text().count("(paper)") >= 3
    assert (out / "report.html").read_text().count("<img ") == 6 + 3


def test_evaluate_run_folder_uses_final_stage_renders(tiny, tmp_path):
    run = tmp_path / "run"
    _write_generated(run / "renders" / "stage1", prompts=PROMPTS[:1], stage=1)
    _write_generated(run / "renders" / "stage2", prompts=PROMPTS[:2], stage=2)
    subject = tmp_path / "clock"  # a DreamBench subject name: class noun "clock" is known
    subject.mkdir()
    _image(7).save(subject / "00.png")
    args = _args(tiny, "--run", str(run), "--subject", str(subject), "--no-html")
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert report["settings"]["class_noun"] == "clock" and report["settings"]["run"] == str(run)
    assert len(report["per_image"]) == 4 and all("stage2" in r["path"] for r in report["per_image"])
    assert report["real_images"]["dino"] is None  # one real image: no pairs
    assert not (run / "evaluation" / "report.html").exists()


def test_evaluate_with_prompts_file(tiny, subject, tmp_path):
    generated = _write_generated(tmp_path / "gen", prompts=["a xjy clock on a table"], per_prompt=2)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a [V] clock on a table\na {0} {1} on a shelf\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(evaluate, _args(tiny, "--generated", str(generated), "--subject",
                                                str(subject), "--class-noun", "clock", "--prompts",
                                                str(prompts), "--out", str(out), "--identifier", "xjy"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((out / "metrics.json").read_text())
    assert report["coverage"]["missing_templates"] == ["a [V] clock on a shelf"]
    assert report["per_prompt"][0]["template"] == "a [V] clock on a table"
    assert report["per_image"][0]["clip_text"] == "a clock on a table"


@pytest.mark.parametrize("case, error, message", [
    ("no_generated_folder", InputError, "generated images folder .*missing: not found"),
    ("empty_generated", InputError, "no PNG images with a 'prompt'"),
    ("no_prompts", InputError, "1 PNG\\(s\\) but none has a 'prompt'"),
    ("no_subject_option", InputError, "--subject DIR is needed"),
    ("missing_subject", InputError, "subject folder .*nosubject: not found"),
    ("empty_subject", InputError, "subject folder .*empty_subject: no images"),
    ("no_class_noun", InputError, "pass --class-noun"),
    ("both_inputs", InputError, "either --run or --generated"),
    ("no_out", InputError, "--out DIR is needed"),
    ("bad_prompts_file", InputError, "prompts file .*nope.txt: not found"),
    ("run_without_renders", InputError, "has no renders/ folder"),
    ("missing_weights", ModelNotFoundError,
     "HF_HUB_OFFLINE.*huggingface-cli download cascade-booth-test/no-dino"),
    ("bad_batch", InputError, "--batch-size 0"),
])
def test_evaluate_bad_inputs(tiny, subject, tmp_path, case, error, message):
    generated = _write_generated(tmp_path / "gen", prompts=PROMPTS[:1])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_subject").mkdir()
    (tmp_path / "noprompt").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "noprompt" / "x.png")
    base = ["--generated", str(generated), "--subject", str(subject), "--class-noun", "clock",
            "--out", str(tmp_path / "out")]
    args = {
        "no_generated_folder": ["--generated", str(tmp_path / "missing"), "--subject", str(subject)],
        "empty_generated": ["--generated", str(tmp_path / "empty"), "--subject", str(subject)],
        "no_prompts": ["--generated", str(tmp_path / "noprompt"), "--subject", str(subject)],
        "no_subject_option": ["--generated", str(generated)],
        "missing_subject": [*base[:2], "--subject", str(tmp_path / "nosubject"), *base[4:]],
        "empty_subject": [*base[:2], "--subject", str(tmp_path / "empty_subject"), *base[4:]],
        "no_class_noun": [*base[:4], "--out", str(tmp_path / "out")],
        "both_inputs": [*base, "--run", str(tmp_path)],
        "no_out": base[:6],
        "bad_prompts_file": [*base, "--prompts", str(tmp_path / "nope.txt")],
        "run_without_renders": ["--run", str(tmp_path), "--subject", str(subject)],
        "missing_weights": [*base, "--dino-model", "cascade-booth-test/no-dino"],
        "bad_batch": [*base, "--batch-size", "0"],
    }[case]
    result = CliRunner().invoke(evaluate, [*_args(tiny), *args])  # later options win
    assert result.exit_code != 0
    assert isinstance(result.exception, error), repr(result.exception)
    assert re.search(message, str(result.exception)), str(result.exception)
    assert not (tmp_path / "out" / "metrics.json").exists()
