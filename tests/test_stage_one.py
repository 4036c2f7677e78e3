"""Stage one end to end on the tiny cascade: CLI, run folder, LoRA files, prior batches, caches."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config
from diffusers import IFPipeline, IFSuperResolutionPipeline
from safetensors.torch import load_file

from cascade_booth.cli import main
from cascade_booth.images import open_rgb
from cascade_booth.models import cache_dir
from cascade_booth.prior import class_images
from cascade_booth.text import TextEmbeddings
from stages.common import stack_images


def test_tiny_cascade_has_ifs_architecture(tiny_paths):
    s1 = IFPipeline.from_pretrained(tiny_paths["base"])
    s2 = IFSuperResolutionPipeline.from_pretrained(tiny_paths["sr"])
    assert s1.unet.config.sample_size == 64 and s1.unet.config.out_channels == 6
    assert s1.unet.config.encoder_hid_dim_type == "text_proj"
    assert s2.unet.config.sample_size == 256 and s2.unet.config.in_channels == 6
    assert s2.unet.config.class_embed_type == "timestep"
    assert s1.scheduler.config.variance_type == "learned_range"


def _train(args, subject, run):
    cli = ["train-base", "--config", "tiny", "--subject", str(subject), "--class-noun", "clock",
           "--run", str(run), "--steps", "2", "--class-images", "2", "--checkpoint-every", "1", *args]
    return CliRunner().invoke(main, cli, catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import CLOCK

    run = tmp_path_factory.mktemp("runs") / "clock"
    result = _train(["--lr", "1e-2"], CLOCK, run)
    assert result.exit_code == 0, result.output
    return run


def test_run_json_records_the_run(trained: Path):
    meta = json.loads((trained / "run.json").read_text())
    ident = meta["identifier"]
    assert meta["instance_prompt"] == f"a {ident} clock" and meta["class_prompt"] == "a clock"
    assert meta["class_noun"] == "clock" and meta["seed"] == 0
    assert meta["models"]["base"] == "tiny" and meta["config"]["base"]["steps"] == 2
    assert set(meta["subject_files"]) == {f"0{i}.jpg" for i in range(6)}
    stage = meta["stages"]["base"]
    assert stage["done"] and stage["variance"] == "learned" and stage["lora_rank"] == 4
    assert {"torch", "diffusers", "peft"} <= set(meta["versions"])


def test_lora_keys_shapes_and_reload_into_ifpipeline(trained: Path, tiny_paths):
    weights = load_file(str(trained / "base" / "pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("unet.") for k in weights)
    assert any("add_k_proj.lora_A" in k for k in weights) and any("to_q.lora_B" in k for k in weights)
    a = next(v for k, v in weights.items() if k.endswith("to_q.lora_A.weight"))
    assert a.shape[0] == 4  # rank
    pipe = IFPipeline.from_pretrained(tiny_paths["base"], text_encoder=None)
    x = torch.randn(1, 3, 64, 64)
    emb = torch.randn(1, 77, pipe.unet.config.encoder_hid_dim)
    before = pipe.unet(x, 10, encoder_hidden_states=emb).sample
    pipe.load_lora_weights(trained / "base")
    after = pipe.unet(x, 10, encoder_hidden_states=emb).sample
    assert not torch.allclose(before, after)  # the trained adapter is loaded and active
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=pipe.get_active_adapters()[0])
    assert len(loaded) == len(weights) == 48  # every adapted module (6 targets x 4 attention blocks x A/B)
    for key, value in weights.items():
        assert torch.equal(loaded[key.removeprefix("unet.")], value), key


def test_no_lora_text_leaves_the_text_keys_and_values_alone(tmp_path, trained: Path):
    from conftest import CLOCK

    run = tmp_path / "image-only"
    result = _train(["--lr", "1e-2", "--no-lora-text"], CLOCK, run)
    assert result.exit_code == 0, result.output
    weights = load_file(str(run / "base" / "pytorch_lora_weights.safetensors"))
    assert any("to_q.lora_A" in k for k in weights) and any("to_k.lora_A" in k for k in weights)
    assert not any("add_k_proj" in k or "add_v_proj" in k for k in weights)
    with_text = load_file(str(trained / "base" / "pytorch_lora_weights.safetensors"))
    assert set(weights) == {k for k in with_text if "add_k_proj" not in k and "add_v_proj" not in k}
    assert json.loads((run / "run.json").read_text())["config"]["base"]["lora_text"] is False
    again = _train(["--resume", "--steps", "3"], CLOCK, run)  # the preset's lora_text = true: another model
    assert again.exit_code != 0 and "lora_text: False -> True" in again.output, again.output


def test_checkpoints_are_written_and_pruned(trained: Path):
    ckpts = sorted(p.name for p in (trained / "base" / "checkpoints").iterdir())
    assert ckpts == ["step-1", "step-2"]
    assert (trained / "base" / "checkpoints" / "step-2" / "COMPLETE").exists()


def test_existing_run_needs_resume_or_force(trained: Path):
    from conftest import CLOCK

    result = CliRunner().invoke(main, ["train-base", "--config", "tiny", "--subject", str(CLOCK),
                                       "--class-noun", "clock", "--run", str(trained)])
    assert result.exit_code != 0 and "--resume" in result.output and "Traceback" not in result.output


def test_prior_batches_hold_instance_then_class_samples(clock_subject, tmp_path):
    from cascade_booth.session import TrainRequest
    from stages.base import prepare

    cfg = tiny_config(batch_size=2)
    ctx, job, _ = prepare(TrainRequest(subject=clock_subject, class_noun="clock", run=tmp_path / "r", config=cfg))
    ctx.run.unlock()
    batch = job.batch(0, torch.Generator().manual_seed(0))
    assert batch.is_prior.tolist() == [False, False, True, True]
    assert torch.equal(batch.text[0], batch.text[1]) and not torch.equal(batch.text[0], batch.text[2])
    # an epoch of instance samples visits every photo once
    seen = torch.cat([job.batch(i, None).x0[:2] for i in range(3)])
    assert len({tuple(x.flatten()[:50].tolist()) for x in seen[:3]}) == 3
    losses = job.losses(job.unet, batch, torch.Generator().manual_seed(0))
    assert losses.shape == (4,) and torch.isfinite(losses).all()


def test_prior_contexts_split_the_class_images_and_give_each_its_prompt(clock_subject, tmp_path, tiny_paths):
    from cascade_booth.session import TrainRequest
    from stages.base import prepare

    cfg = tiny_config(batch_size=5)
    cfg.prior.class_images, cfg.prior.contexts = 5, ["in the snow", "on the beach"]
    ctx, job, _ = prepare(TrainRequest(subject=clock_subject, class_noun="clock", run=tmp_path / "r", config=cfg))
    ctx.run.unlock()
    texts = TextEmbeddings(tiny_paths["base"], cache_dir())
    expected = ["a clock"] * 2 + ["a clock in the snow"] * 2 + ["a clock on the beach"]  # 5 split 2 / 2 / 1
    assert torch.equal(job.class_text, texts.stack(expected))
    batch = job.batch(0, None)  # one epoch of the class images: each with its own prompt's text
    class_x0, class_text = batch.x0[batch.is_prior], batch.text[batch.is_prior]
    for x0, text in zip(class_x0, class_text, strict=True):
        k = next(i for i in range(5) if torch.equal(job.class_images[i], x0))
        assert torch.equal(text, texts.get(expected[k]))
    # the class prompt's own images are the paper's prior (same seed, same cache), the contexts' are not
    plain = class_images(tiny_paths["base"], "a clock", dataclasses.replace(cfg.prior, class_images=2, contexts=[]),
                         cfg.seed, cache_dir(), texts)
    assert torch.equal(job.class_images[:2], stack_images([open_rgb(p) for p in plain], 64))
    same_noise = class_images(tiny_paths["base"], "a clock in the snow",
                              dataclasses.replace(cfg.prior, class_images=2, contexts=[]), cfg.seed, cache_dir(), texts)
    assert not torch.equal(job.class_images[2:4], stack_images([open_rgb(p) for p in same_noise], 64))


def test_prior_contexts_are_checked(clock_subject, tmp_path):
    for contexts, images, words in ((["in the snow", " "], 8, "empty context"),
                                    (["in the snow", "in the snow"], 8, "repeats a context"),
                                    (["in the snow"], 1, "class_images >= 2")):
        result = CliRunner().invoke(main, ["train-base", "--config", str(_config_file(tmp_path, contexts, images)),
                                           "--subject", str(clock_subject), "--class-noun", "clock",
                                           "--run", str(tmp_path / "r")])
        assert result.exit_code != 0 and "[prior] contexts" in result.output and words in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def _config_file(folder: Path, contexts: list[str], images: int) -> Path:
    from cascade_booth.config import CONFIG_DIR

    path = folder / "contexts.toml"
    tiny = (CONFIG_DIR / "tiny.toml").read_text()
    path.write_text(tiny.replace("class_images = 4", f"class_images = {images}\ncontexts = {json.dumps(contexts)}"))
    return path


def test_class_image_cache_is_reused_and_grows(tiny_paths):
    cfg = tiny_config().prior
    texts = TextEmbeddings(tiny_paths["base"], cache_dir())
    calls = []

    def fill(seed: int = 7):
        return class_images(tiny_paths["base"], "a vase", cfg, seed, cache_dir(), texts,
                            progress=lambda d, t: calls.append(d))

    cfg.class_images = 2
    first = fill()
    stamps = [os.stat(p).st_mtime_ns for p in first]
    cfg.class_images = 4
    grown = fill()
    assert grown[:2] == first and [os.stat(p).st_mtime_ns for p in first] == stamps
    assert calls == [0, 2, 2, 4]  # each generation reports its start (what is cached), then the images it made
    again = fill()
    assert again == grown and calls == [0, 2, 2, 4]  # nothing regenerated
    other_seed = fill(8)
    assert other_seed[0].parent != grown[0].parent


def test_text_embeddings_are_cached_and_the_encoder_not_reloaded(tiny_paths, monkeypatch):
    texts = TextEmbeddings(tiny_paths["base"], cache_dir())
    texts.ensure(["a red vase"])
    emb = texts.get("a red vase")
    assert emb.shape == (77, 32)

    def boom(*a, **k):
        raise AssertionError("encoder loaded again")

    monkeypatch.setattr("transformers.T5EncoderModel.from_pretrained", boom)
    again = TextEmbeddings(tiny_paths["base"], cache_dir())
    again.ensure(["a red vase", "A Red Vase "])  # same prompt after IF's preprocessing
    assert torch.equal(again.get("a red vase"), emb)


def test_full_fine_tune_saves_a_unet(clock_subject, tmp_path):
    result = _train(["--full", "--no-prior"], clock_subject, tmp_path / "full")
    assert result.exit_code == 0, result.output
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "full" / "base" / "unet")
    assert unet.config.out_channels == 6
    assert json.loads((tmp_path / "full" / "run.json").read_text())["stages"]["base"]["full"] is True


def test_validation_images_every_n_steps(clock_subject, tmp_path):
    from cascade_booth.session import TrainRequest
    from stages.base import run

    cfg = tiny_config(steps=2, validation_every=1)
    cfg.prior.enabled = False
    run(TrainRequest(subject=clock_subject, class_noun="clock", run=tmp_path / "v", config=cfg))
    shots = sorted(p.name for p in (tmp_path / "v" / "base" / "validation").iterdir())
    assert shots == ["step-1.png", "step-2.png"]
    from PIL import Image

    assert Image.open(tmp_path / "v" / "base" / "validation" / "step-1.png").width >= 2 * 64


def test_photos_too_small_for_stage_two_are_warned_at_stage_one(clock_subject, tmp_path):
    from PIL import Image

    from cascade_booth.session import TrainRequest
    from stages.base import prepare

    small = clock_subject / "00.jpg"
    Image.open(small).resize((128, 128)).save(small)
    ctx, _, _ = prepare(TrainRequest(subject=clock_subject, class_noun="clock", run=tmp_path / "r",
                                     config=tiny_config()))
    ctx.run.unlock()
    assert any("00.jpg: 128 px is below stage two's 256 px" in w for w in ctx.warnings)


def test_a_string_of_pieces_as_identifier_trains_with_a_warning_and_is_recorded(tmp_path: Path):
    """The paper's "random character string" identifier (section 4.2): allowed, warned about, used as given."""
    from conftest import CLOCK

    result = _train(["--identifier", "zqxjvw"], CLOCK, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "pieces of the text encoder" in result.output
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["identifier"] == "zqxjvw" and meta["instance_prompt"] == "a zqxjvw clock"
