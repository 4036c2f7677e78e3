"""Tests that fail when the mechanism behind a claim is broken (issue 13), on the tiny cascade.

Each test was checked by breaking its mechanism on purpose: render skipping a stage's adapter, the
text encoder fed the unfilled template, an optimizer step that moves nothing, a sweep point whose
grid value is dropped. Comparisons are against an independent reference (diffusers' pipelines, a
direct T5 encoding, the initial weights), never two runs of the same, possibly broken, code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import clock_photos, job_losses, tiny_config
from safetensors.torch import load_file

from cascade_booth import runner
from cascade_booth.models import cache_dir, resolve_model
from cascade_booth.runner import RenderRequest, plan_render, sample_cascade
from cascade_booth.text import TextEmbeddings

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a [V] clock in the jungle"
STEPS = 2  # stage one's sampling steps; stage two (256 px, the slow one) takes 1
SEED = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Both stages trained for real (1 step each, a large learning rate so each adapter is visible), no prior."""
    from cascade_booth.session import TrainRequest
    from stages import sr
    from stages.base import run as train_base

    subject = clock_photos(tmp_path_factory.mktemp("subject"))
    folder = tmp_path_factory.mktemp("runs") / "both"
    cfg = tiny_config(steps=1, lr=1e-2)
    cfg.prior.enabled = False
    train_base(TrainRequest(subject=subject, class_noun="clock", run=folder, config=cfg))
    sr.run(sr.SRRequest(run=folder, overrides=dict(steps=1, lr=1e-2, checkpoint_every=0)))
    return folder


def _plan(run_folder: Path, sr: bool = True):
    plan = plan_render(RenderRequest(run=run_folder, prompts=[PROMPT], sr=sr, steps=STEPS, num_images=1,
                                     seed=SEED, warn=lambda message: None))
    if sr:
        plan.sr.steps = 1
    assert plan.base.weights is not None and (not sr or plan.sr.weights is not None)
    return plan


def _texts(plan) -> TextEmbeddings:
    texts = TextEmbeddings(plan.text_model, cache_dir())
    texts.ensure(plan.prompts + [""])
    return texts


# 1. each stage's adapter is loaded at render, exactly as diffusers loads the same file ----------------------


@pytest.fixture(scope="module")
def renders(run):
    """64 px and 256 px renders of one prompt: with the run's adapters, and with each stage's left out."""
    plan = _plan(run)
    texts = _texts(plan)
    cpu = torch.device("cpu")
    out = {"plan": plan, "texts": texts, "tuned": sample_cascade(plan, texts, cpu)[0]}
    base_only = _plan(run, sr=False)
    out["tuned_64"] = sample_cascade(base_only, texts, cpu)[0]
    no_base = copy.deepcopy(base_only)
    no_base.base.weights = None
    out["plain_64"] = sample_cascade(no_base, texts, cpu)[0]
    no_sr = copy.deepcopy(plan)
    no_sr.sr.weights = None
    out["plain_sr"] = sample_cascade(no_sr, texts, cpu)[0]
    return out


def _differ(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_stage_one_adapter_changes_the_render(renders):
    assert renders["tuned_64"].shape == (1, 3, 64, 64)
    assert _differ(renders["tuned_64"], renders["plain_64"]) > 1e-3


def test_stage_two_adapter_changes_the_render(renders):
    assert renders["tuned"].shape == (1, 3, 256, 256)
    assert _differ(renders["tuned"], renders["plain_sr"]) > 1e-3  # same 64 px input, only stage two's adapter


def test_render_equals_diffusers_pipelines_loading_the_same_lora_files(run, renders):
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    plan, texts = renders["plan"], renders["texts"]
    text, neg = texts.stack(plan.prompts), texts.stack([""])
    extras = dict(text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None, watermarker=None,
                  requires_safety_checker=False)
    one = IFPipeline.from_pretrained(resolve_model("tiny", 1), **extras)
    one.load_lora_weights(run / "base")
    one.set_progress_bar_config(disable=True)
    gen = [torch.Generator().manual_seed(SEED)]  # like the runner, stage two continues stage one's generator
    low = one(prompt_embeds=text, negative_prompt_embeds=neg, num_inference_steps=STEPS,
              guidance_scale=plan.base.guidance, generator=gen,
              output_type="pt").images
    assert torch.allclose(low, renders["tuned_64"], atol=1e-4), _differ(low, renders["tuned_64"])

    two = IFSuperResolutionPipeline.from_pretrained(resolve_model("tiny", 2), **extras)
    two.load_lora_weights(run / "sr")
    two.set_progress_bar_config(disable=True)
    high = two(image=low, prompt_embeds=text, negative_prompt_embeds=neg,
               num_inference_steps=plan.sr.steps, noise_level=plan.sr.noise_level, guidance_scale=plan.sr.guidance,
               generator=gen, output_type="pt").images
    assert torch.allclose(high, renders["tuned"], atol=1e-4), _differ(high, renders["tuned"])


# 2. the text encoder sees the prompt with the run's identifier filled in ------------------------------------


def _t5_states(texts: list[str]) -> torch.Tensor:
    """IF's text conditioning computed directly: lower-case, 77 tokens padded, attention mask, T5's last states."""
    from transformers import T5EncoderModel, T5Tokenizer

    base = resolve_model("tiny", 1)
    tokenizer = T5Tokenizer.from_pretrained(base / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(base / "text_encoder").eval()
    tokens = tokenizer([t.lower().strip() for t in texts], padding="max_length", max_length=77, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0].float()


def spy_text_states(monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Make the runner's UNets record the text states of every call (per stage name) and predict zeros."""
    seen: dict[str, list[torch.Tensor]] = {}
    load = runner.load_stage_unet

    def spying_load(stage, device, dtype):
        unet = load(stage, device, dtype)

        def forward(sample, timestep, encoder_hidden_states=None, **kwargs):
            seen.setdefault(stage.name, []).append(encoder_hidden_states.detach().float().cpu())
            return (torch.zeros(sample.shape[0], unet.config.out_channels, *sample.shape[2:], dtype=sample.dtype),)

        unet.forward = forward
        return unet

    monkeypatch.setattr(runner, "load_stage_unet", spying_load)
    return seen


def test_render_conditions_both_stages_on_the_filled_prompt(run, tmp_path, monkeypatch):
    seen = spy_text_states(monkeypatch)
    paths = runner.render_run(RenderRequest(run=run, prompts=[PROMPT], sr=True, steps=1, num_images=1,
                                            out=tmp_path / "out", warn=lambda message: None))
    assert paths and set(seen) == {"base", "sr"}
    identifier = json.loads((run / "run.json").read_text())["identifier"]
    filled, template, empty = _t5_states([PROMPT.replace("[V]", identifier), PROMPT, ""])
    assert (filled - template).abs().max() > 1e-3  # the check below can tell the two apart
    for name, calls in seen.items():
        neg, text = calls[0].chunk(2)  # classifier-free guidance: unconditional half first
        assert torch.allclose(text[0], filled, atol=1e-5), (name, float((text[0] - filled).abs().max()))
        assert torch.allclose(neg[0], empty, atol=1e-5), name


# 3. a training step moves the trained weights (and only those) -------------------------------------------


def _one_step(subject: Path, folder: Path, **base) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Stage one prepared as the CLI prepares it, then one real trainer step; returns the UNet and its start."""
    from cascade_booth.session import TrainRequest
    from cascade_booth.trainer import Callbacks, train
    from stages.base import prepare

    cfg = tiny_config(steps=1, lr=1e-3, **base)
    cfg.prior.enabled = False
    ctx, job, _ = prepare(TrainRequest(subject=subject, class_noun="clock", run=folder, config=cfg))
    ctx.run.unlock()
    start = {name: p.detach().clone() for name, p in job.unet.named_parameters()}
    assert train(job, cfg.base, folder / "checkpoints", cfg.seed, False, Callbacks()) == 1
    return job.unet, start


def _pretrained_unet_state() -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(resolve_model("tiny", 1) / "unet")
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_lora_step_moves_the_adapter_and_not_the_frozen_base(clock_subject, tmp_path):
    unet, start = _one_step(clock_subject, tmp_path / "lora")
    pretrained = _pretrained_unet_state()
    adapter = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    assert len(adapter) == 48  # 6 target projections x 4 attention blocks x (A, B)
    assert all(not start[n].any() for n in adapter if "lora_B" in n)  # B starts at zero: the adapter starts as a no-op
    unmoved = [n for n, p in adapter.items() if torch.equal(p.detach(), start[n])]
    assert not unmoved, unmoved[:3]
    frozen = {n: p for n, p in unet.named_parameters() if "lora_" not in n}
    assert len(frozen) == len(pretrained)
    for name, param in frozen.items():
        assert torch.equal(param.detach(), pretrained[name.replace(".base_layer", "")]), name
        assert not param.requires_grad, name


def test_full_fine_tune_step_moves_the_unet(clock_subject, tmp_path):
    unet, _ = _one_step(clock_subject, tmp_path / "full", full=True)
    pretrained = _pretrained_unet_state()
    params = dict(unet.named_parameters())
    assert set(params) <= set(pretrained) and not any("lora_" in n for n in params)
    moved = [n for n, p in params.items() if not torch.equal(p.detach(), pretrained[n])]
    assert len(moved) >= 0.9 * len(params), f"{len(moved)} of {len(params)} tensors moved"
    for name in ("conv_in.weight", "conv_out.weight", "encoder_hid_proj.weight"):  # image and text branches
        assert name in moved, name


def _stage_one_job(subject: Path, run: Path, **base):
    """Stage one's Job on the tiny cascade, without class images, with ``base`` settings; the run unlocked."""
    from cascade_booth.session import TrainRequest
    from stages.base import prepare

    cfg = tiny_config(steps=1, **base)
    cfg.prior.enabled = False
    ctx, job, _ = prepare(TrainRequest(subject=subject, class_noun="clock", run=run, config=cfg))
    ctx.run.unlock()
    return job


def test_x0_weight_cap_reaches_the_job_and_weights_each_sample_by_its_timestep(clock_subject, tmp_path):
    from cascade_booth.losses import x0_weights

    job = _stage_one_job(clock_subject, tmp_path / "run", x0_weight_cap=20.0)
    assert job.x0_weight_cap == 20.0
    batch = job.batch(0, torch.Generator().manual_seed(0))
    weighted = job_losses(job, batch)
    plain = job_losses(job, batch, x0_weight_cap=1.0)
    t = torch.randint(0, 1000, (len(plain),), generator=torch.Generator().manual_seed(3))  # what the loss drew first
    assert torch.allclose(weighted, plain * x0_weights(job.scheduler, t, 20.0), rtol=1e-5)
    assert not torch.allclose(weighted, plain)


def test_offset_noise_reaches_the_job_and_its_losses(clock_subject, tmp_path):
    job = _stage_one_job(clock_subject, tmp_path / "run", offset_noise=0.3)
    assert job.offset_noise == 0.3
    batch = job.batch(0, torch.Generator().manual_seed(0))
    assert not torch.allclose(job_losses(job, batch), job_losses(job, batch, offset_noise=0.0))


# 4. a sweep point's settings reach its run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    from cascade_booth.evaluation.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("eval-models"))


def test_sweep_points_record_and_train_with_their_grid_values(tmp_path, clock_subject, tiny_eval):
    from cascade_booth.cli import main

    (tmp_path / "prompts.txt").write_text("a [V] clock on a wooden bench\n")
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'config = "tiny"\nsubject = "{clock_subject}"\nclass_noun = "clock"\nprompts = "prompts.txt"\n'
                    f'images_per_prompt = 1\nclass_prompts = false\ndevice = "cpu"\n'
                    f'dino_model = "{tiny_eval["dino"]}"\nclip_model = "{tiny_eval["clip"]}"\n'
                    '[fixed]\n"base.steps" = 1\n"base.checkpoint_every" = 0\n"prior.enabled" = false\n'
                    '"render.steps" = 1\n"base.lr" = 3e-4\n'
                    '[grid]\n"base.lora_rank" = [2, 8]\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sweep", "--spec", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = {p["name"]: p for p in json.loads((out / "sweep.json").read_text())["points"]}
    assert set(summary) == {"rank=2", "rank=8"}
    for rank in (2, 8):
        run_folder = out / "points" / f"rank={rank}" / "run"
        meta = json.loads((run_folder / "run.json").read_text())
        assert meta["config"]["base"]["lora_rank"] == rank and meta["config"]["base"]["lr"] == 3e-4
        assert meta["stages"]["base"]["lora_rank"] == rank  # what stage one recorded training with
        weights = load_file(str(run_folder / "base" / "pytorch_lora_weights.safetensors"))
        ranks = {v.shape[0] for k, v in weights.items() if "lora_A" in k}
        assert ranks == {rank}, ranks  # what it really trained
        stage_one = json.loads((Path(meta["stage_one_run"]) / "run.json").read_text())
        assert stage_one["config"]["base"]["lora_rank"] == rank
