"""Stage two (SR fine-tune): same conditioning as rendering, learns to follow its input, run folder, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import job_losses
from diffusers import DDPMScheduler, IFImg2ImgSuperResolutionPipeline, IFSuperResolutionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from cascade_booth.config import load_config
from cascade_booth.errors import InputError, RunError
from cascade_booth.handoff import text_model_path
from cascade_booth.images import to_tensor
from cascade_booth.models import cache_dir, resolve_model
from cascade_booth.runfolder import RunFolder
from cascade_booth.sampling import make_scheduler, sample_sr
from cascade_booth.session import load_subject, subject_fingerprint
from cascade_booth.tiny import if_scheduler, unet_config
from stages import sr

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "checkpoints"))
    return dst


def _edit(run: Path, fn) -> None:
    meta = json.loads((run / "run.json").read_text())
    fn(meta)
    (run / "run.json").write_text(json.dumps(meta))


class _Stop(Exception):
    pass


def _first_unet_call(unet, fn) -> dict:
    """The inputs of the first UNet call made by ``fn`` (the call itself is cut short)."""
    seen: dict = {}

    def hook(module, args, kwargs):
        seen.update(sample=args[0].detach().cpu(), timestep=torch.as_tensor(args[1]).cpu(),
                    class_labels=kwargs["class_labels"].cpu())
        raise _Stop

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        fn()
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen


# (a) conditioning identity ------------------------------------------------------------------------------


def test_offset_noise_reaches_stage_twos_job_and_its_losses(stage_one):
    ctx, job, _ = sr.prepare(sr.SRRequest(run=stage_one, overrides=dict(offset_noise=0.2)))
    ctx.run.unlock()
    assert job.offset_noise == 0.2
    batch = job.batch(0, torch.Generator().manual_seed(0))
    assert not torch.allclose(job_losses(job, batch), job_losses(job, batch, offset_noise=0.0))


@pytest.fixture(scope="module")
def captured(stage_one):
    """UNet inputs from a training loss, our sampler and diffusers' IFSuperResolutionPipeline, same seed."""
    ctx, job, cfg = sr.prepare(sr.SRRequest(run=stage_one))
    try:
        with pytest.raises(RunError, match="another cascade-booth process"):
            RunFolder(stage_one).lock()  # the run folder is locked while stage two holds it
    finally:
        ctx.run.unlock()
    job.batch_size = 2
    batch = job.batch(0, torch.Generator())
    unet, level, seed = job.unet.eval(), job.noise_level, 7
    dev = next(unet.parameters()).device
    text, neg, low_res = batch.text.to(dev), torch.zeros_like(batch.text).to(dev), batch.low_res.to(dev)

    def train_call(noise_level: int = level):
        gen = torch.Generator().manual_seed(seed)
        randn_tensor(batch.x0.shape, generator=gen)  # the sampler's initial noise comes first from the seed
        job.noise_level = noise_level
        with torch.no_grad():
            job.losses(unet, batch, gen)
        job.noise_level = level

    model_path = resolve_model("tiny", 2)
    sched = make_scheduler(DDPMScheduler.load_config(model_path / "scheduler"), "learned", 2, dev)
    pipe = IFSuperResolutionPipeline.from_pretrained(
        model_path, unet=unet, text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
        watermarker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return {
        "level": level, "batch": batch,
        "train": _first_unet_call(unet, train_call),
        "train_250": _first_unet_call(unet, lambda: train_call(250)),
        "ours": _first_unet_call(unet, lambda: sample_sr(
            unet, sched, job.noising_scheduler, low_res, text, neg, level, 4.0,
            torch.Generator().manual_seed(seed))),
        "diffusers": _first_unet_call(unet, lambda: pipe(
            image=low_res, prompt_embeds=text, negative_prompt_embeds=neg, num_inference_steps=2,
            noise_level=level, guidance_scale=4.0, generator=torch.Generator().manual_seed(seed), output_type="pt")),
        "ours_input": _first_unet_call(unet, lambda: sample_sr(
            unet, sched, job.noising_scheduler, low_res, text, neg, level, 4.0,
            torch.Generator().manual_seed(seed), start="input")),
        "diffusers_img2img": _first_unet_call(unet, lambda: IFImg2ImgSuperResolutionPipeline(**pipe.components)(
            image=low_res, original_image=upsampled(low_res, 256), strength=1.0, prompt_embeds=text,
            negative_prompt_embeds=neg, num_inference_steps=2, noise_level=level, guidance_scale=4.0,
            generator=torch.Generator().manual_seed(seed), output_type="pt")),
        "ours_half": _first_unet_call(unet, lambda: sample_sr(
            unet, sched, job.noising_scheduler, low_res, text, neg, level, 4.0,
            torch.Generator().manual_seed(seed), start="input", strength=0.5)),
        "diffusers_img2img_half": _first_unet_call(unet, lambda: IFImg2ImgSuperResolutionPipeline(**pipe.components)(
            image=low_res, original_image=upsampled(low_res, 256), strength=0.5, prompt_embeds=text,
            negative_prompt_embeds=neg, num_inference_steps=2, noise_level=level, guidance_scale=4.0,
            generator=torch.Generator().manual_seed(seed), output_type="pt")),
    }


def upsampled(low_res: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(low_res, (size, size), mode="bilinear", align_corners=True)


def test_sr_start_from_the_input_equals_diffusers_img2img_sr_at_strength_one(captured):
    """render.sr_start = "input": the first sample is the upsampled input noised to the first timestep."""
    ours, theirs, pure = captured["ours_input"]["sample"], captured["diffusers_img2img"]["sample"], \
        captured["ours"]["sample"]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[:, 3:], pure[:, 3:], rtol=0, atol=1e-6)  # same conditioning as from noise
    assert not torch.allclose(ours[:, :3], pure[:, :3], atol=1e-3)  # but another start


def test_sr_strength_starts_later_like_diffusers_img2img_sr(captured):
    """render.sr_strength = 0.5 of 2 steps: one step, from the input noised to the second timestep, as diffusers."""
    half, theirs, full = (captured[k] for k in ("ours_half", "diffusers_img2img_half", "ours_input"))
    torch.testing.assert_close(half["sample"], theirs["sample"], rtol=0, atol=1e-5)
    assert torch.equal(half["timestep"], theirs["timestep"]) and half["timestep"].max() < full["timestep"].min()
    assert not torch.allclose(half["sample"][:, :3], full["sample"][:, :3], atol=1e-3)  # less noise on the input


def test_training_conditioning_equals_rendering_and_diffusers(captured):
    train, ours, theirs = captured["train"]["sample"], captured["ours"]["sample"], captured["diffusers"]["sample"]
    b = train.shape[0]
    assert train.shape == (b, 6, 256, 256) and ours.shape == theirs.shape == (2 * b, 6, 256, 256)
    cond = train[:, 3:]
    for half in (ours[:b, 3:], ours[b:, 3:], theirs[:b, 3:], theirs[b:, 3:]):
        torch.testing.assert_close(half, cond, rtol=0, atol=1e-6)
    level = captured["level"]
    assert captured["train"]["class_labels"].tolist() == [level] * b
    labels = captured["ours"]["class_labels"].tolist()
    assert labels == captured["diffusers"]["class_labels"].tolist() == [level] * 2 * b
    # the conditioning is the upsampled 64 px input, lightly noised (not the target, not pure noise)
    up = torch.nn.functional.interpolate(captured["batch"].low_res, (256, 256), mode="bilinear", align_corners=True)
    assert (cond - up).abs().mean() < 0.3
    # the comparison is sensitive: another noise level gives another conditioning
    assert not torch.allclose(captured["train_250"]["sample"][:, 3:], cond, atol=1e-3)


def test_diffusers_dreambooth_script_conditioning_would_not_match(captured):
    """train_dreambooth(_lora).py for IF-II: cat([noisy target, noisy target]), class_labels = timestep."""
    train, theirs = captured["train"], captured["diffusers"]
    b = train["sample"].shape[0]
    x_t = train["sample"][:, :3]
    script_input = torch.cat([x_t, x_t], dim=1)
    script_labels = train["timestep"]
    assert not torch.allclose(script_input[:, 3:], theirs["sample"][:b, 3:], atol=1e-2)
    assert not torch.equal(script_labels.reshape(-1), theirs["class_labels"][:b].reshape(-1))


# (b) behaviour: a short fine-tune makes the SR output follow its low-resolution input -------------------


def _halves(size: int, left: tuple, right: tuple) -> Image.Image:
    img = Image.new("RGB", (size, size), right)
    img.paste(Image.new("RGB", (size // 2, size), left), (0, 0))
    return img


def _micro_sr_model(folder: Path) -> Path:
    """An IF-II-shaped SR pipeline folder at 32 px (two blocks), so a real fine-tune takes seconds."""
    torch.manual_seed(0)
    config = dict(unet_config(2), sample_size=32, block_out_channels=(16, 32),
                  down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                  up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"))
    UNet2DConditionModel(**config).save_pretrained(folder / "unet")
    if_scheduler(1.0).save_pretrained(folder / "scheduler")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(folder / "image_noising_scheduler")
    shutil.copy(resolve_model("tiny", 2) / "model_index.json", folder / "model_index.json")
    return folder


@pytest.fixture(scope="module")
def micro_run(stage_one, tmp_path_factory):
    """Stage two run end to end (full fine-tune, class prompt) on red|blue and blue|red photos, 8 -> 32 px."""
    root = tmp_path_factory.mktemp("micro")
    subject = root / "subject"
    subject.mkdir()
    red, blue = (230, 20, 20), (20, 20, 230)
    _halves(64, red, blue).save(subject / "a.png")
    _halves(64, blue, red).save(subject / "b.png")
    run = _copy_run(stage_one, root / "run")
    files = subject_fingerprint(load_subject(subject, 32)[0])

    def fake_stage_one_at_8px(meta):
        meta.update(subject=str(subject), subject_files=files)
        meta["stages"]["base"]["resolution"] = 8

    _edit(run, fake_stage_one_at_8px)
    model = _micro_sr_model(root / "micro-sr")
    req = sr.SRRequest(run=run, model=str(model))
    req.overrides = dict(steps=60, lr=3e-3, full=True, batch_size=2, checkpoint_every=0, prompt="class")
    ctx = sr.run(req)
    return run, ctx


def _render_micro(run: Path, zero_condition: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    from cascade_booth.runner import StagePlan, load_stage_unet
    from cascade_booth.text import TextEmbeddings

    meta = json.loads((run / "run.json").read_text())
    rec = meta["stages"]["sr"]
    plan = StagePlan("sr", rec["model"], Path(rec["model_path"]), run / "sr" / "unet", rec["variance"], 10, 1.0,
                     rec["noise_level"])
    unet = load_stage_unet(plan, torch.device("cpu"), torch.float32)
    texts = TextEmbeddings(text_model_path(meta), cache_dir())
    red, blue = (230, 20, 20), (20, 20, 230)
    low = torch.stack([to_tensor(_halves(8, red, blue), 8), to_tensor(_halves(8, blue, red), 8)])
    text = texts.stack([rec["prompt_text"]] * 2)
    sched = make_scheduler(DDPMScheduler.load_config(plan.model_path / "scheduler"), plan.variance, 10, "cpu")
    noising = DDPMScheduler.from_pretrained(plan.model_path / "image_noising_scheduler")
    handle = None
    if zero_condition:  # a model that ignores its low-resolution input
        handle = unet.register_forward_pre_hook(lambda m, a: (torch.cat([a[0][:, :3], 0 * a[0][:, 3:]], 1),
                                                               *a[1:]))
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]  # same noise for both inputs
    out = sample_sr(unet, sched, noising, low, text, torch.zeros_like(text), plan.noise_level, 1.0, gens)
    if handle:
        handle.remove()
    up = torch.nn.functional.interpolate(low, (32, 32), mode="bilinear", align_corners=True)
    return out, up


def _left_minus_right_redness(img: torch.Tensor) -> float:
    redness = img[0] - img[2]
    return float(redness[:, :16].mean() - redness[:, 16:].mean())


def test_fine_tuned_sr_follows_its_low_res_input(micro_run):
    run, _ = micro_run
    out, up = _render_micro(run)
    a, b = _left_minus_right_redness(out[0]), _left_minus_right_redness(out[1])
    assert a > 0.3 and b < -0.3, (a, b)  # red|blue input -> red|blue output, and the mirror image
    corr = torch.corrcoef(torch.stack([out.flatten(), up.flatten()]))[0, 1]
    assert corr > 0.2, corr
    # control: with the conditioning zeroed the two outputs coincide, so the assertions above would fail
    zeroed, _ = _render_micro(run, zero_condition=True)
    za, zb = _left_minus_right_redness(zeroed[0]), _left_minus_right_redness(zeroed[1])
    assert abs(za - zb) < 1e-4 and not (za > 0.3 and zb < -0.3)


def test_full_fine_tune_with_class_prompt_is_recorded(micro_run):
    run, ctx = micro_run
    rec = json.loads((run / "run.json").read_text())["stages"]["sr"]
    assert rec["done"] and rec["full"] and rec["lora_rank"] is None and rec["files"] == ["unet"]
    assert rec["prompt"] == "class" and rec["prompt_text"] == "a clock"
    assert rec["base_resolution"] == 8 and rec["sr_resolution"] == rec["resolution"] == 32
    assert (run / "sr" / "unet" / "config.json").is_file() and ctx.identifier == rec["identifier"]


# (c) outputs, run.json, resume, bad input --------------------------------------------------------------


def test_lora_run_records_stage_and_resumes(stage_one, tmp_path):
    run = _copy_run(stage_one, tmp_path / "run")
    starts = []
    req = sr.SRRequest(run=run, overrides=dict(steps=1, checkpoint_every=1))
    ctx = sr.run(req)
    meta = json.loads((run / "run.json").read_text())
    rec = meta["stages"]["sr"]
    assert rec["done"] and rec["noise_level"] == 100 and rec["variance"] == "learned" and rec["prompt"] == "instance"
    assert rec["base_resolution"] == 64 and rec["sr_resolution"] == rec["resolution"] == 256
    assert rec["model"] == "tiny" and Path(rec["model_path"]) == resolve_model("tiny", 2)
    assert rec["prompt_text"] == meta["instance_prompt"] and rec["lora_rank"] == 4 and rec["steps"] == 1
    assert rec["files"] == ["pytorch_lora_weights.safetensors"] and (run / "sr" / rec["files"][0]).is_file()
    assert (run / "sr" / "checkpoints" / "step-1" / "COMPLETE").is_file() and ctx.warnings == []
    assert ctx.identifier == meta["identifier"] and ctx.run.path == run
    with pytest.raises(RunError, match="--resume"):
        sr.run(sr.SRRequest(run=run, overrides=dict(steps=1)))
    with pytest.raises(RunError, match="variance: 'learned' -> 'fixed'"):
        sr.run(sr.SRRequest(run=run, resume=True, overrides=dict(steps=2, variance="fixed")))
    longer = sr.SRRequest(run=run, resume=True, overrides=dict(steps=2, checkpoint_every=1))  # more steps: no drift
    from cascade_booth.trainer import Callbacks

    sr.run(longer, Callbacks(on_start=lambda start, total: starts.append((start, total))))
    assert starts == [(1, 2)]  # continued from the step-1 checkpoint
    assert json.loads((run / "run.json").read_text())["stages"]["sr"]["steps"] == 2


def test_needs_a_finished_stage_one(stage_one, tmp_path):
    with pytest.raises(RunError, match="no run.json"):
        sr.run(sr.SRRequest(run=tmp_path / "empty"))
    run = _copy_run(stage_one, tmp_path / "run")
    _edit(run, lambda meta: meta.update(stages={}))
    with pytest.raises(RunError, match="train-base"):
        sr.run(sr.SRRequest(run=run))
    assert not (run / "sr").exists()


def test_small_or_changed_photos(stage_one, tmp_path):
    subject = shutil.copytree(json.loads((stage_one / "run.json").read_text())["subject"], tmp_path / "photos")
    run = _copy_run(stage_one, tmp_path / "run")
    _edit(run, lambda meta: meta.update(subject=str(subject)))
    Image.open(subject / "01.jpg").resize((200, 200)).save(subject / "01.jpg")
    with pytest.raises(InputError, match=r"(?s)256 px.*01\.jpg.*200x200"):
        sr.run(sr.SRRequest(run=run))
    Image.open(subject / "00.jpg").resize((300, 300)).save(subject / "01.jpg")  # big enough, but not the same
    with pytest.raises(RunError, match=r"changed: 01\.jpg"):
        sr.run(sr.SRRequest(run=run))
    meta = json.loads((run / "run.json").read_text())
    _, warnings = sr.load_pairs(meta, 64, 256, allow_drift=True)
    assert any("01.jpg" in w for w in warnings)


def test_config_comes_from_the_run_unless_given(stage_one):
    meta = json.loads((stage_one / "run.json").read_text())
    meta["config"]["sr"]["noise_level"] = 42
    cfg = sr.resolve_config(sr.SRRequest(run=stage_one), meta)
    assert cfg.sr.noise_level == 42 and cfg.model.sr == "tiny" and cfg.base.steps == 1
    req = sr.SRRequest(run=stage_one, config="tiny", model="some/sr-model", seed=3)
    req.overrides = dict(noise_level=7, prompt="class", lr=None)
    cfg = sr.resolve_config(req, meta)
    assert (cfg.sr.noise_level, cfg.sr.prompt, cfg.model.sr, cfg.seed, cfg.base.steps) == (7, "class", "some/sr-model",
                                                                                         3, 6)
    with pytest.raises(InputError, match="--noise-level must be in 0..999"):
        sr.resolve_config(sr.SRRequest(run=stage_one, overrides=dict(noise_level=1000)), meta)


# (c) stage two's class prior ([sr] class_images) --------------------------------------------------------


def test_class_prior_pairs_are_stage_ones_class_images_and_the_frozen_srs_renders(stage_one):
    """Each class pair is (one of stage one's cached class images, what the frozen SR draws from it with the class
    prompt, sampled as the runner samples), trained with the class prompt, masked as prior, at [prior] weight."""
    from cascade_booth.seeds import derive_seed
    from cascade_booth.sr_prior import sr_class_pairs
    from cascade_booth.text import TextEmbeddings

    ctx, job, cfg = sr.prepare(sr.SRRequest(run=stage_one, overrides=dict(class_images=2, class_block=8)))
    ctx.run.unlock()
    meta = ctx.meta
    assert job.class_targets.shape == (2, 3, 256, 256) and job.prior_weight == cfg.prior.weight
    assert job.class_block == 8
    from cascade_booth.prior import cache_key
    from stages.sr import _prior_spec

    spec = _prior_spec(ctx, 64)
    folder = cache_key(spec.base_model, meta["class_prompt"], 64, load_config("tiny").prior, meta["seed"])
    cached = [cache_dir() / "class_images" / folder / f"{i:05d}.png" for i in range(2)]  # stage one's first two
    assert torch.equal(job.class_low_res, torch.stack([to_tensor(Image.open(p), 64) for p in cached]))
    texts = TextEmbeddings(text_model_path(meta), cache_dir())
    assert torch.equal(job.class_text, texts.get(meta["class_prompt"]))

    # The second image redrawn by hand: the frozen tiny SR from its own generator, the run's render settings.
    unet = UNet2DConditionModel.from_pretrained(resolve_model("tiny", 2) / "unet").eval()
    r = cfg.render
    sched = make_scheduler(DDPMScheduler.load_config(resolve_model("tiny", 2) / "scheduler"), "learned", r.sr_steps,
                           "cpu")
    own = torch.Generator().manual_seed(derive_seed("sr-class-image", meta["seed"], 1))
    text = texts.get(meta["class_prompt"])[None]
    drawn = sample_sr(unet, sched, job.noising_scheduler, job.class_low_res[1:], text, texts.get("")[None],
                      cfg.sr.noise_level, r.sr_guidance, [own], start=r.sr_start, strength=r.sr_strength)
    pixels = ((drawn.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    assert torch.allclose(job.class_targets[1], pixels[0], atol=1.5 / 127.5)

    batch = job.batch(0, torch.Generator())
    n = job.batch_size
    assert batch.is_prior.tolist() == [False] * n + [True] * n and len(batch.low_res) == 2 * n
    assert torch.equal(batch.text[n], job.class_text) and torch.equal(batch.text[0], job.text)
    assert job_losses(job, batch).shape == (2 * n,)
    # [sr] class_block: the class pairs are compared on 8 x 8 block means, the subject pairs as before (same t,
    # noise and conditioning from the same generator).
    full, coarse = job_losses(job, batch, class_block=1), job_losses(job, batch, class_block=8)
    assert torch.equal(full[:n], coarse[:n]) and torch.all(coarse[n:] < full[n:])

    # A smaller count reads the same cache: the first pair does not depend on how many were asked for.
    from dataclasses import replace

    spec_cfg = replace(cfg, sr=replace(cfg.sr, class_images=1))
    low, high = sr_class_pairs(spec, spec_cfg, cache_dir(), texts, torch.device("cpu"))
    assert torch.equal(to_tensor(Image.open(high[0]), 256), job.class_targets[0])


def test_without_class_prior_stage_two_trains_the_subject_alone(stage_one):
    ctx, job, _ = sr.prepare(sr.SRRequest(run=stage_one))
    ctx.run.unlock()
    assert job.class_targets is None and job.prior_weight == 0.0
    assert not job.batch(0, torch.Generator()).is_prior.any()
    meta = json.loads((stage_one / "run.json").read_text())
    with pytest.raises(InputError, match=r"--class-images must be >= 0, got -1 \(0: no class prior"):
        sr.resolve_config(sr.SRRequest(run=stage_one, overrides=dict(class_images=-1)), meta)
    with pytest.raises(InputError, match=r"--class-block 7: must divide stage two's resolution 256"):
        sr.prepare(sr.SRRequest(run=stage_one, overrides=dict(class_images=2, class_block=7)))


# (d) [sr] crop: training on windows ------------------------------------------------------------------------


def test_paired_crop_cuts_the_same_random_window_from_target_and_conditioning():
    from cascade_booth.diffusion import paired_crop

    x0 = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target, cond = paired_crop(x0, x0.clone(), 8, torch.Generator().manual_seed(1))
    assert target.shape == cond.shape == (4, 3, 8, 8) and torch.equal(target, cond)
    again, _ = paired_crop(x0, x0.clone(), 8, torch.Generator().manual_seed(1))
    assert torch.equal(again, target)  # the windows come from the generator alone
    corners = [next((y, x) for y in range(25) for x in range(25) if torch.equal(x0[i, :, y:y + 8, x:x + 8], target[i]))
               for i in range(4)]
    assert len(set(corners)) > 1  # one window per sample, not one per batch


def test_crop_feeds_the_unet_a_window_of_the_inference_conditioning(stage_one):
    """With ``[sr] crop`` the UNet sees crop x crop inputs whose conditioning half is a window of the whole image's
    conditioning (upsampled and noised as at inference, then cut): the same generator draws the same conditioning."""
    ctx, job, _ = sr.prepare(sr.SRRequest(run=stage_one, overrides=dict(crop=64)))
    ctx.run.unlock()
    assert job.crop == 64
    batch = job.batch(0, torch.Generator().manual_seed(0))
    whole = _first_unet_call(job.unet, lambda: job_losses(job, batch, crop=0))["sample"]
    cut = _first_unet_call(job.unet, lambda: job_losses(job, batch, crop=64))["sample"]
    assert whole.shape[-1] == 256 and cut.shape[-2:] == (64, 64)
    for i in range(len(cut)):
        cond, window = whole[i, 3:], cut[i, 3:]
        starts = (cond == window[:, :1, :1]).all(0).nonzero().tolist()  # where the window's first pixel could be
        assert any(torch.equal(cond[:, y:y + 64, x:x + 64], window) for y, x in starts if y <= 192 and x <= 192)
    assert job_losses(job, batch, crop=64).shape == (len(cut),)


def test_a_crop_the_unet_cannot_halve_or_larger_than_the_image_is_refused_before_any_work(stage_one):
    for crop in (66, 512):  # the tiny SR halves its input twice: multiples of 4
        with pytest.raises(InputError, match=rf"--crop {crop}: must be a multiple of \d+ \(the UNet's downsampling\) "
                                             r"and at most stage two's resolution 256"):
            sr.prepare(sr.SRRequest(run=stage_one, overrides=dict(crop=crop)))
    with pytest.raises(InputError, match=r"--crop must be >= 0, got -8 \(0: whole images\)"):
        sr.prepare(sr.SRRequest(run=stage_one, overrides=dict(crop=-8)))
