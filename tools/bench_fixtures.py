"""Fixtures and process plumbing for ``tools/bench.py``: model folders, photos, configs, both tools' commands.

Nothing here times anything except ``run_measured``, which runs one tool as a child process and returns
its wall time, CPU time, max RSS (``os.wait4``) and, through ``tools/bench_launch.py``, its peak CUDA memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
LAUNCH = TOOLS / "bench_launch.py"
CLASS_NOUN = "dog"
N_SUBJECT = 4
N_CLASS = 4  # class images used by the timed training runs (generated once, untimed)
LR = 1e-4
RANK = 4
FIXTURE_VERSION = 2
DIFFUSERS = "diffusers train_dreambooth_lora.py"  # the peer's row name in every table


@dataclass
class Setup:
    """Everything both tools share in one benchmark call."""

    work: Path
    device: str  # "cpu" or "cuda"
    precision: str  # "no", "fp16" or "bf16": cascade-booth --mixed-precision, diffusers --mixed_precision
    unet: str  # stage-one UNet config (tools/if_configs.py)
    sr_unet: str  # stage-two UNet config
    sr_resolution: int
    threads: int
    gen_images: int
    gen_batch: int
    diffusers_script: Path | None
    shim: bool  # run diffusers' script with tools/torchvision_shim (no real torchvision here)
    t5_dim: int = 4096  # IF's T5-XXL width: the UNets' text_proj input and attention-pool width

    @property
    def base_model(self) -> Path:
        return self.work / "model-base"

    @property
    def sr_model(self) -> Path:
        return self.work / "model-sr"

    @property
    def subject(self) -> Path:
        return self.work / "subject"

    def signature(self) -> dict:
        """What the fixtures (model folders, photos, warm-up run) depend on."""
        return dict(version=FIXTURE_VERSION, unet=self.unet, sr_unet=self.sr_unet, sr_resolution=self.sr_resolution,
                    t5_dim=self.t5_dim)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------- models
def _text_parts(t5_dim: int):
    """The tiny sentencepiece T5 tokenizer and a random 2-layer T5 encoder of width ``t5_dim`` (IF: 4096).

    Both tools run it once at start-up only (embeddings are precomputed), so its size is not in the step time.
    """
    import torch
    from transformers import T5Config, T5EncoderModel

    from cascade_booth.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=t5_dim, d_kv=64, d_ff=256, num_layers=2, num_heads=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, dropout_rate=0.0,
        is_encoder_decoder=False,
    ))
    return tokenizer, encoder


def _unet(name: str, t5_dim: int, sample_size: int | None = None):
    """Random-weight UNet of config ``name`` reading ``t5_dim``-wide text states, fp32, built on the CPU (no
    CUDA context in the benchmark process)."""
    from if_configs import build_unet  # a sibling, like every tools/ import

    return build_unet(name, encoder_hid_dim=t5_dim, **({} if sample_size is None else {"sample_size": sample_size}))


def _save(pipe, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)


def build_models(setup: Setup) -> dict:
    """Stage one: an ``IFPipeline`` folder; stage two: an ``IFSuperResolutionPipeline`` folder (same T5).

    fp32 weights on disk (like the hub's default files); each tool casts to its compute dtype on load.
    """
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    from cascade_booth.tiny import if_scheduler

    tokenizer, encoder = _text_parts(setup.t5_dim)
    none = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    unet = _unet(setup.unet, setup.t5_dim)
    info = dict(unet=setup.unet, unet_params=sum(p.numel() for p in unet.parameters()))
    _save(IFPipeline(tokenizer=tokenizer, text_encoder=encoder, unet=unet, scheduler=if_scheduler(1.5), **none),
          setup.base_model)
    del unet
    sr = _unet(setup.sr_unet, setup.t5_dim, setup.sr_resolution)
    info.update(sr_unet=setup.sr_unet, sr_unet_params=sum(p.numel() for p in sr.parameters()),
                text_encoder_params=sum(p.numel() for p in encoder.parameters()))
    _save(IFSuperResolutionPipeline(
        tokenizer=tokenizer, text_encoder=encoder, unet=sr, scheduler=if_scheduler(1.0),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), **none,
    ), setup.sr_model)
    return info


def make_subject(folder: Path, size: int) -> None:
    """Four RGB photos (smooth random colour fields) of ``size`` px; each tool resizes them per stage."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(N_SUBJECT):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i:02d}.png")


def write_config(path: Path, setup: Setup, variance: str, sampler: str = "ddpm", sample_steps: int = 2,
                 class_images: int = N_CLASS, sample_batch: int = N_CLASS, compile_unet: bool = False) -> Path:
    """A cascade-booth TOML: both stages' training settings (the same for each) and the class-image sampler."""
    stage = (f"batch_size = 1\nlr = {LR}\nlora_rank = {RANK}\nvariance = \"{variance}\"\ncheckpoint_every = 0\n"
             f"validation_every = 0\ncompile = {str(compile_unet).lower()}\n")
    path.write_text(
        f"""seed = 0
[model]
base = "{setup.base_model}"
sr = "{setup.sr_model}"
upscaler = "none"
[prior]
class_images = {class_images}
sampler = "{sampler}"
sample_steps = {sample_steps}
guidance = 7.0
batch_size = {sample_batch}
[base]
{stage}[sr]
{stage}""",
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------------------------------- commands
def cascade_base_cmd(setup: Setup, run_dir: Path, steps: int, config: Path) -> list[str]:
    return [
        sys.executable, str(LAUNCH), "-m", "cascade_booth.cli", "train-base", "--subject", str(setup.subject),
        "--class-noun", CLASS_NOUN, "--run", str(run_dir), "--config", str(config), "--model", str(setup.base_model),
        "--steps", str(steps), "--batch-size", "1", "--lora-rank", str(RANK), "--lr", str(LR),
        "--checkpoint-every", "0", "--prior", "--seed", "0", "--mixed-precision", setup.precision,
    ]


def cascade_sr_cmd(setup: Setup, run_dir: Path, steps: int, config: Path) -> list[str]:
    """``train-sr`` on a copy of the warm-up run (a finished stage one); noise level: cascade-booth's default."""
    return [
        sys.executable, str(LAUNCH), "-m", "cascade_booth.cli", "train-sr", "--run", str(run_dir),
        "--config", str(config), "--model", str(setup.sr_model), "--steps", str(steps), "--batch-size", "1",
        "--lora-rank", str(RANK), "--lr", str(LR), "--checkpoint-every", "0", "--seed", "0",
        "--mixed-precision", setup.precision,
    ]


def diffusers_cmd(setup: Setup, model: Path, out_dir: Path, steps: int, prompt: str, resolution: int) -> list[str]:
    """diffusers' DreamBooth LoRA script, settings shared by every section (add the prior / SR flags)."""
    if setup.diffusers_script is None:
        raise ValueError("no --diffusers-script")
    launch = [sys.executable, str(LAUNCH)] + (["--torchvision-shim"] if setup.shim else [])
    return launch + [
        str(setup.diffusers_script), "--pretrained_model_name_or_path", str(model),
        "--instance_data_dir", str(setup.subject), "--instance_prompt", prompt,
        "--output_dir", str(out_dir), "--seed", "0", "--resolution", str(resolution), "--center_crop",
        "--train_batch_size", "1", "--max_train_steps", str(steps), "--checkpointing_steps", "1000000",
        "--learning_rate", str(LR), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--max_grad_norm", "1.0", "--rank", str(RANK), "--mixed_precision", setup.precision,
        "--dataloader_num_workers", "0", "--report_to", "all",
        "--pre_compute_text_embeddings", "--tokenizer_max_length", "77", "--text_encoder_use_attention_mask",
    ]


def diffusers_prior_args(setup: Setup, class_dir: Path, class_prompt: str, n_class: int, batch: int) -> list[str]:
    # Class-image sampling dtype: cascade-booth samples in bf16 on CUDA and fp32 on the CPU, whatever
    # --mixed-precision says (prior.load_sampling_pipeline); diffusers is told the same.
    precision = "bf16" if setup.device == "cuda" else "fp32"
    return ["--class_data_dir", str(class_dir), "--class_prompt", class_prompt, "--with_prior_preservation",
            "--prior_loss_weight", "1.0", "--num_class_images", str(n_class), "--sample_batch_size", str(batch),
            "--prior_generation_precision", precision]


# ----------------------------------------------------------------------------------------- running
def tool_env(setup: Setup, cache: Path) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(setup.threads), MKL_NUM_THREADS=str(setup.threads), TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
        CASCADE_BOOTH_CACHE=str(cache), HF_HOME=str(setup.work / "hf-home"), PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    if setup.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both tools pick CUDA when they see it
    return env


def run_measured(cmd: list[str], env: dict, log_file: Path) -> dict:
    """Run ``cmd``; wall and CPU seconds, max RSS (MiB), peak CUDA memory (MiB) and the load average."""
    stats_file = log_file.with_suffix(".stats.json")
    stats_file.unlink(missing_ok=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, env=dict(env, BENCH_STATS_FILE=str(stats_file)), stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"command failed ({code}): {' '.join(cmd)}\n--- {log_file} tail ---\n{tail}")
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    mib = 1024.0**2
    return dict(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, rss_mib=usage.ru_maxrss / 1024.0,  # KiB
                gpu_reserved_mib=stats["cuda_max_reserved"] / mib if "cuda_max_reserved" in stats else None,
                gpu_allocated_mib=stats["cuda_max_allocated"] / mib if "cuda_max_allocated" in stats else None,
                load1_before=load0, load1_after=os.getloadavg()[0])


# ------------------------------------------------------------------------------------------ record
def machine(device: str) -> dict:
    cpu, mem = "unknown", ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    out = dict(nproc=os.cpu_count(), affinity=len(os.sched_getaffinity(0)), cpu=cpu, mem_total=mem,
               platform=platform.platform(), python=platform.python_version(), load1=os.getloadavg()[0])
    if device == "cuda":
        try:
            out["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            out["gpu"] = f"nvidia-smi failed: {err}"
    return out


def versions(setup: Setup) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict = {}
    for pkg in ("torch", "diffusers", "transformers", "peft", "accelerate", "cascade-booth", "torchvision"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    if setup.shim:
        out["torchvision"] = "tools/torchvision_shim (diffusers run only)"
    if setup.diffusers_script is not None:
        digest = hashlib.sha256(setup.diffusers_script.read_bytes()).hexdigest()[:16]
        out["train_dreambooth_lora.py sha256"] = digest
    return out


def info_resolution(model: Path) -> int:
    return int(json.loads((model / "unet" / "config.json").read_text())["sample_size"])


def log_run(m: dict) -> None:
    gpu = f", GPU reserved {m['gpu_reserved_mib']:.0f} MiB" if m["gpu_reserved_mib"] is not None else ""
    log(f"  wall {m['wall_s']:.1f} s, cpu {m['cpu_s']:.1f} s, max RSS {m['rss_mib']:.0f} MiB{gpu}, "
        f"load {m['load1_before']:.1f}->{m['load1_after']:.1f}")


def peaks(runs: list[dict]) -> dict:
    gpu = [r["gpu_reserved_mib"] for r in runs if r["gpu_reserved_mib"] is not None]
    alloc = [r["gpu_allocated_mib"] for r in runs if r["gpu_allocated_mib"] is not None]
    return dict(peak_rss_mib=max(r["rss_mib"] for r in runs), peak_gpu_reserved_mib=max(gpu) if gpu else None,
                peak_gpu_allocated_mib=max(alloc) if alloc else None)
