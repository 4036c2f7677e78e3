"""CPU benchmark: stage-one LoRA step time and peak memory, cascade-booth vs diffusers' DreamBooth LoRA script.

One command runs both tools, each as its own subprocess, at equal settings on one IF-style pipeline
folder built here around a ~100M-parameter IF-shaped stage-one UNet (``tools/if_configs.py``,
``cpu-100m``, random weights)::

    python tools/bench_cpu.py --diffusers-script /tmp/bench-diffusers/train_dreambooth_lora.py

Settings shared by both tools: 64 px, prior preservation with 1 instance + 1 class image per step
(2 samples through the UNet), LoRA rank 4 on the same modules (to_q/k/v/out.0, add_k/v_proj), AdamW
lr 1e-4 constant, grad-norm clip 1.0, fp32, no checkpoints, no validation, precomputed T5 embeddings
(77 tokens, 4096-d), the same 4 subject photos and the same 4 class images (generated once by
cascade-booth before any timed run, then copied for diffusers), ``OMP_NUM_THREADS`` threads.

Per-step time is a difference of two runs: ``(t(N2) - t(N1)) / (N2 - N1)``, so start-up (imports,
model load, embeddings, saving) cancels and is reported separately as ``t(N1) - N1 * step``.
Peak memory is the max RSS of each tool's process (``os.wait4``), the larger of its two runs.

The diffusers script is third-party code: get it outside this repository (``fetch`` the diffusers
repo, ``git show HEAD:examples/dreambooth/train_dreambooth_lora.py``). It imports torchvision for its
image transforms only; there is no CPU torchvision build for this torch, so its run gets
``tools/torchvision_shim`` (a few PIL/torch transforms, run through its ``launch.py`` so that
transformers/diffusers still see no torchvision). cascade-booth never sees it.

The two tools' runs are interleaved (A n1, B n1, A n2, B n2, ...) so that load from other processes
on a shared machine hits both alike; CPU seconds (user + sys of the process) are reported beside
wall seconds because they are less sensitive to such load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM = HERE / "torchvision_shim"
CLASS_NOUN = "dog"
N_SUBJECT = 4
N_CLASS = 4
RESOLUTION = 64
LR = 1e-4
RANK = 4
T5_DIM = 4096  # IF's T5-XXL width: the UNet's text_proj input and attention-pool width


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------- fixtures
def build_model(folder: Path, unet_name: str) -> dict:
    """An IFPipeline folder: tiny sentencepiece T5 tokenizer, a 2-layer 4096-d T5 encoder, the UNet."""
    import torch
    from diffusers import IFPipeline
    from transformers import T5Config, T5EncoderModel

    from cascade_booth.tiny import build_tokenizer, if_scheduler

    sys.path.insert(0, str(HERE))
    from if_configs import build_unet  # noqa: E402  (tools/ is not a package)

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    # Small T5 of IF's output width, so the UNet sees [B, 77, 4096] states like IF-I; both tools run
    # it once at start-up only (embeddings are precomputed), so its size does not enter the step time.
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=64, d_ff=256, num_layers=2, num_heads=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, dropout_rate=0.0,
        is_encoder_decoder=False,
    ))
    unet = build_unet(unet_name, seed=0)
    pipe = IFPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=if_scheduler(1.5),
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return {
        "unet_config": unet_name,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
    }


def make_subject(folder: Path) -> None:
    """Four 128 px RGB photos (smooth random colour fields), resized to 64 px by both tools."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(N_SUBJECT):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((128, 128), Image.Resampling.BICUBIC).save(folder / f"{i:02d}.png")


def write_config(path: Path, model: Path) -> None:
    path.write_text(
        f"""seed = 0
[model]
base = "{model}"
sr = "{model}"
upscaler = "none"
[prior]
class_images = {N_CLASS}
sampler = "ddpm"
sample_steps = 2
guidance = 7.0
batch_size = {N_CLASS}
[base]
batch_size = 1
lr = {LR}
lora_rank = {RANK}
checkpoint_every = 0
validation_every = 0
""",
        encoding="utf-8",
    )


# ------------------------------------------------------------------------------------------ running
def run_measured(cmd: list[str], env: dict, log_file: Path) -> dict:
    """Run ``cmd``; return wall and CPU seconds, max RSS (MiB) of that process, and the load average."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log_file} tail ---\n{tail}")
    return dict(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, rss_mib=usage.ru_maxrss / 1024.0,  # KiB
                load1_before=load0, load1_after=os.getloadavg()[0])


def base_env(work: Path, threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
        CASCADE_BOOTH_CACHE=str(work / "cache"), HF_HOME=str(work / "hf-home"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def cascade_cmd(work: Path, model: Path, run_dir: Path, steps: int, variance_cfg: Path) -> list[str]:
    exe = Path(sys.executable).with_name("cascade-booth")
    return [
        str(exe), "train-base", "--subject", str(work / "subject"), "--class-noun", CLASS_NOUN,
        "--run", str(run_dir), "--config", str(variance_cfg), "--model", str(model), "--steps", str(steps),
        "--batch-size", "1", "--lora-rank", str(RANK), "--lr", str(LR), "--checkpoint-every", "0",
        "--prior", "--class-images", str(N_CLASS), "--seed", "0",
        "--mixed-precision", "no",
    ]


def diffusers_cmd(script: Path, work: Path, model: Path, out_dir: Path, steps: int, prompts: dict) -> list[str]:
    return [
        sys.executable, str(SHIM / "launch.py"), str(script),
        "--pretrained_model_name_or_path", str(model),
        "--instance_data_dir", str(work / "subject"), "--instance_prompt", prompts["instance_prompt"],
        "--class_data_dir", str(work / "class_images"), "--class_prompt", prompts["class_prompt"],
        "--with_prior_preservation", "--prior_loss_weight", "1.0", "--num_class_images", str(N_CLASS),
        "--output_dir", str(out_dir), "--seed", "0", "--resolution", str(RESOLUTION), "--center_crop",
        "--train_batch_size", "1", "--max_train_steps", str(steps), "--checkpointing_steps", "1000000",
        "--learning_rate", str(LR), "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
        "--max_grad_norm", "1.0", "--rank", str(RANK), "--mixed_precision", "no",
        "--dataloader_num_workers", "0", "--report_to", "all",
        "--pre_compute_text_embeddings", "--tokenizer_max_length", "77", "--text_encoder_use_attention_mask",
    ]


def prepare(work: Path, unet_name: str, threads: int) -> dict:
    """Model folder, subject photos, configs; one untimed cascade-booth run fills the class-image and
    text-embedding caches, whose class images are then copied for diffusers."""
    info_file = work / "fixtures.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    log(f"building model folder {model} ({unet_name})")
    shutil.rmtree(model, ignore_errors=True)  # no fixtures.json: an earlier prepare did not finish
    info = build_model(model, unet_name)
    make_subject(work / "subject")
    for variance in ("learned", "fixed"):
        cfg = work / f"cascade-{variance}.toml"
        write_config(cfg, model)
        cfg.write_text(cfg.read_text() + f'variance = "{variance}"\n')
    log("warm-up cascade-booth run (class images + embedding cache; not timed)")
    warm = work / "runs" / "warmup"
    shutil.rmtree(warm, ignore_errors=True)
    run_measured(cascade_cmd(work, model, warm, 1, work / "cascade-learned.toml"), base_env(work, threads),
                 work / "warmup.log")
    meta = json.loads((warm / "run.json").read_text())
    pngs = sorted((work / "cache" / "class_images").glob("*/*.png"))
    if len(pngs) != N_CLASS:
        raise RuntimeError(f"expected {N_CLASS} cached class images, found {len(pngs)}")
    dst = work / "class_images"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    for p in pngs:
        shutil.copy2(p, dst / p.name)
    info.update(instance_prompt=meta["instance_prompt"], class_prompt=meta["class_prompt"])
    info_file.write_text(json.dumps(info, indent=2))
    return info


def bench(args) -> dict:
    work = args.work.resolve()
    info = prepare(work, args.unet, args.threads)
    model = work / "model"
    n1, n2 = args.steps
    tools: dict = {}
    if not args.skip_cascade:
        for variance in args.variance:
            cfg = work / f"cascade-{variance}.toml"
            tools[f"cascade-booth (variance={variance})"] = (
                lambda n, d, cfg=cfg: cascade_cmd(work, model, d, n, cfg), base_env(work, args.threads))
    if args.diffusers_script:
        env = base_env(work, args.threads)
        script = args.diffusers_script.resolve()
        tools["diffusers train_dreambooth_lora.py"] = (
            lambda n, d: diffusers_cmd(script, work, model, d, n, info), env)
    results = {}
    for rep in range(args.repeats):
        for n in (n1, n2):
            for name, (make_cmd, env) in tools.items():
                tag = name.split()[0] + ("-" + name.split("=")[1].rstrip(")") if "=" in name else "")
                out_dir = work / "runs" / f"{tag}-n{n}-r{rep}"
                shutil.rmtree(out_dir, ignore_errors=True)
                log(f"{name}: {n} steps (repeat {rep + 1}/{args.repeats})")
                m = run_measured(make_cmd(n, out_dir), env, work / "runs" / f"{tag}-n{n}-r{rep}.log")
                log(f"  wall {m['wall_s']:.1f} s, cpu {m['cpu_s']:.1f} s, max RSS {m['rss_mib']:.0f} MiB, "
                    f"load {m['load1_before']:.1f}->{m['load1_after']:.1f}")
                results.setdefault(name, {}).setdefault(n, []).append(m)
                results[name].setdefault("cmd", {})[n] = make_cmd(n, out_dir)
    rows = []
    for name, res in results.items():
        row = dict(tool=name)
        for key in ("wall", "cpu"):
            t1 = statistics.median(r[f"{key}_s"] for r in res[n1])
            t2 = statistics.median(r[f"{key}_s"] for r in res[n2])
            step = (t2 - t1) / (n2 - n1)
            row.update({f"startup_{key}_s": t1 - n1 * step, f"step_{key}_s": step})
        rows.append(dict(row,
                         peak_rss_mib=max(r["rss_mib"] for n in (n1, n2) for r in res[n]),
                         runs={str(n): res[n] for n in (n1, n2)}, cmd=res["cmd"][n2]))
    return dict(info=info, steps=[n1, n2], repeats=args.repeats, threads=args.threads, rows=rows,
                machine=machine(), versions=versions(), date=time.strftime("%Y-%m-%d %H:%M %Z"))


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return dict(nproc=os.cpu_count(), affinity=len(os.sched_getaffinity(0)), cpu=cpu, mem_total=mem,
                platform=platform.platform(), python=platform.python_version())


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "diffusers", "transformers", "peft", "accelerate", "cascade-booth"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def table(res: dict) -> str:
    lines = ["| tool | startup s (wall) | per-step s (wall) | per-step CPU s | peak RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in res["rows"]:
        lines.append(f"| {r['tool']} | {r['startup_wall_s']:.1f} | {r['step_wall_s']:.2f} | {r['step_cpu_s']:.2f} "
                     f"| {r['peak_rss_mib']:.0f} |")
    ref = next((r for r in res["rows"] if r["tool"].startswith("diffusers")), None)
    if ref:
        lines.append("")
        for r in res["rows"]:
            if r is not ref:
                lines.append(f"- {r['tool']}: wall step time {r['step_wall_s'] / ref['step_wall_s']:.2f}x diffusers', "
                             f"CPU step time {r['step_cpu_s'] / ref['step_cpu_s']:.2f}x, "
                             f"peak RSS {r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/cascade-booth-bench-cpu"),
                   help="scratch folder (model, images, caches, run outputs); reused between calls")
    p.add_argument("--diffusers-script", type=Path, default=None,
                   help="path to diffusers' examples/dreambooth/train_dreambooth_lora.py (kept outside the repo)")
    p.add_argument("--unet", default="cpu-100m", help="UNet config name from tools/if_configs.py")
    p.add_argument("--steps", type=int, nargs=2, default=(2, 5), metavar=("N1", "N2"))
    p.add_argument("--repeats", type=int, default=1, help="runs per step count; the median wall time is used")
    p.add_argument("--threads", type=int, default=2, help="OMP/MKL threads for both tools")
    p.add_argument("--variance", nargs="+", default=["learned", "fixed"], choices=["learned", "fixed"],
                   help="cascade-booth stage-one variance setting(s) to time (diffusers trains epsilon only)")
    p.add_argument("--skip-cascade", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write all measurements here (default WORK/results.json)")
    args = p.parse_args(argv)
    if args.steps[1] <= args.steps[0]:
        p.error("--steps N1 N2 needs N2 > N1")
    res = bench(args)
    out = args.json or args.work / "results.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print()
    print(table(res))
    print(f"\nmachine: {res['machine']}\nversions: {res['versions']}\nall measurements: {out}")


if __name__ == "__main__":
    main()
