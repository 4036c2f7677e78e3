"""Issue 14: photos in, personalized cascade out: cascade-booth vs diffusers' DreamBooth LoRA script, on the world.

    python tools/bench_world.py --diffusers-script build/bench-diffusers/train_dreambooth_lora.py \
        --out build/bench-world [--subject clock:7] [--images 2] [--threads 1] [--only cascade-booth,diffusers-equal]

Both tools start from the same world subject photos (``world subject``, 256 px) and the same shipped world
models (diffusers' script takes ``cascade_booth/world/models/base`` / ``sr`` as
``--pretrained_model_name_or_path``), with the same identifier (the one cascade-booth chose). Tools:

- ``cascade-booth``: ``train-base --config world``, ``train-sr --config world``, ``render`` (the preset, e.g.
  stage one 600 steps, batch 4 + 4 class images, lr 3e-3, LoRA rank 8, 48 class images; stage two 200
  steps, batch 2, conditioned on the noise-augmented 32 px photo as at inference: LoRA rank 8 at lr 1e-4 in
  the 2026-12-05 results, at 1e-3 until 2026-12-07, a full fine-tune at lr 2e-4 since).
- ``cascade-booth-short``: the same preset with a third of the steps (stage one 200, stage two 100), and
  ``cascade-booth-100`` (100 and 100): how long the whole cascade takes to reach diffusers-equal's quality
  (stage one alone passes it after 100 steps, ``tools/bench_world_curve.py``).
- ``cascade-booth-lora-text``: the preset with LoRA on the text keys/values too (``--lora-text``), the LoRA
  targets of diffusers' IF script; the preset leaves them out (``[base] lora_text = false``, less drift).
  ``cascade-booth-bf16``: stage one in bf16 autocast as well (``--mixed-precision bf16``).
- ``cascade-booth-crop``: stage two on one random 64 x 64 window of each pair (``train-sr --crop 64``), and
  ``cascade-booth-200-crop``: the same with 200 stage-one steps.
- ``diffusers-equal``: ``train_dreambooth_lora.py`` at the preset's steps, lr, rank, batch and precision (as
  resolved on this machine: stage two in bf16 where the CPU has bf16 units) (stage one with
  ``--with_prior_preservation``, 48 class images that the script samples with the folder's pipeline;
  stage two ``--class_labels_conditioning timesteps``: the noisy target concatenated with itself; when the
  preset fine-tunes stage two fully, their full fine-tuning script ``train_dreambooth.py``,
  ``--diffusers-full-script``, as their README does for IF stage II).
- ``diffusers-recommended``: their README's IF stage-I LoRA recipe (1,200 steps, batch 4, lr 5e-6 with
  ``--scale_lr``, rank 4, no prior preservation) and, for stage two, their tip for subjects without
  fine detail: the pretrained upscaler, the identifier removed from its prompt (their stage-II recipe,
  2,000 steps at lr 1e-6, took 31 min here and is measured apart: tools/results/world-bench-journal.md).
- ``diffusers-pretrained``: no training; the diffusers rendering above without LoRA, the baseline against
  which the diffusers rows' figures are read (cascade-booth's baseline is its ``world score`` "pretrained").

Each tool starts from an empty cascade-booth cache (``OUT/cache/TOOL``: a second cascade-booth row makes its
own class images). Each child process runs with ``OMP_NUM_THREADS=--threads``; its output lines are timestamped
as they arrive and its resident memory is sampled every 50 ms, which splits its time and peak memory into parts:
start-up, class-image generation, text encoding + model loading, training steps, saving (+ diffusers' final
pipeline reload), and the first render (one image through both stages, a process of its own). Quality: every
non-plain context with ``--images`` images, and the same prompts without the identifier, read back by the
world evaluators (``tools/world_tables_report.render_metrics``, ``cascade_booth.world.readback``). Beside the tools,
a ``ground truth`` column: the subject itself drawn by the world renderer in every asked context, scored the same
way, so that each metric's ceiling on this subject is in the table (``world_tables_report.draw_truth``).
Results: ``OUT/results.json`` and ``OUT/results.md``. Exits non-zero when any tool fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_world_report import quality, write_results  # siblings: the script's folder is first on sys.path
from world_tables_report import draw_truth

from cascade_booth.config import load_config
from cascade_booth.devices import compute_precision, device

REPO = Path(__file__).resolve().parents[1]

MODELS = REPO / "cascade_booth" / "world" / "models"
SHIM = Path(__file__).resolve().parent / "torchvision_shim" / "launch.py"
PARTS = {  # part -> pattern of the output lines that belong to it (first match starts it, last ends it)
    "class images": r"class images:|Generating class images",
    "steps": r"^stage (one|two):|^Steps:",
}
SMOKE_BASE = ["--steps", "4", "--class-images", "4", "--checkpoint-every", "0"]  # --smoke: every path, no meaning
SMOKE_SR = ["--steps", "2", "--checkpoint-every", "0"]
VARIANTS = {  # the preset with these (stage one, stage two) flags
    "cascade-booth-short": (["--steps", "200"], ["--steps", "100"]),  # a third of the steps: time to quality
    "cascade-booth-100": (["--steps", "100"], ["--steps", "100"]),  # stage one's first curve point
    "cascade-booth-200-150": (["--steps", "200"], ["--steps", "150"]),  # the short row, stage two half again as long
    # LoRA on the text keys/values too, as diffusers' IF LoRA script adapts them (add_k_proj, add_v_proj): the
    # equal-settings row's LoRA targets (the preset leaves them out: [base] lora_text = false)
    "cascade-booth-lora-text": (["--lora-text"], []),
    "cascade-booth-bf16": (["--mixed-precision", "bf16"], []),  # stage one in bf16 autocast too (stage two is)
    # stage two on one random 64 x 64 window of each pair (train-sr --crop 64): a quarter of the pixels per step
    "cascade-booth-crop": ([], ["--crop", "64"]),
    "cascade-booth-200-crop": (["--steps", "200"], ["--crop", "64"]),  # and a third of stage one's steps
}
TOOLS = ("cascade-booth", "diffusers-equal", *VARIANTS, "diffusers-recommended", "diffusers-pretrained")


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_timed(name: str, cmd: list[str], env: dict, logs: Path) -> dict:
    """Run ``cmd``; its wall time, max RSS, and each part's seconds and peak RSS (see the module docstring)."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - t0, _rss_mib(proc.pid)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines: list[tuple[float, str]] = []
    buf = b""
    with open(logs / f"{name}.log", "w") as log:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            buf += chunk
            *pieces, buf = re.split(rb"[\r\n]", buf)
            for piece in filter(None, pieces):
                text = piece.decode(errors="replace")
                lines.append((time.perf_counter() - t0, text))
                log.write(f"{lines[-1][0]:9.2f} {text}\n")
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)}); see {logs / (name + '.log')}")
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024.0, "parts": split_parts(lines, samples, wall)}


def split_parts(lines: list[tuple[float, str]], samples: list[tuple[float, float]], wall: float) -> dict:
    """Consecutive parts: start-up (before the first part), each part found, the gap between parts, the end."""
    spans = []
    for part, pattern in PARTS.items():
        times = [t for t, text in lines if re.search(pattern, text)]
        if times:
            spans.append((min(times), max(times), part))
    spans.sort()
    cuts, t = [], 0.0
    for start, end, part in spans:
        cuts.append((f"before {part}", t, start))  # start-up, model loading, text encoding
        cuts.append((part, start, end))
        t = end
    cuts.append(("end (saving, exit)" if spans else "whole", t, wall))

    def peak(a: float, b: float) -> float:
        return max([r for s, r in samples if a <= s <= b] or [0.0])

    out: dict[str, dict] = {}
    for part, a, b in cuts:
        if part in out:
            part = f"{part} {len(out)}"
        out[part] = {"s": round(b - a, 2), "peak_mib": round(peak(a, b), 1)}
    return out


# ----------------------------------------------------------------------------------------------- tools
def env_for(threads: int, cache: Path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                CASCADE_BOOTH_CACHE=str(cache), CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def cascade_booth(a: argparse.Namespace, tool: str, photos: Path, work: Path, env: dict) -> tuple[dict, Path, str]:
    """Train both stages and render once with cascade-booth; returns (timings, run folder, identifier).
    The ``VARIANTS`` rows train the preset with a few flags changed (fewer steps: time to quality, whole cascade)."""
    cli, run = [sys.executable, "-m", "cascade_booth.cli"], work / "run"
    base = [*cli, "train-base", "--config", "world", "--subject", str(photos), "--class-noun", a.cls, "--run", str(run)]
    sr = [*cli, "train-sr", "--config", "world", "--run", str(run)]
    if tool in VARIANTS:
        base, sr = base + VARIANTS[tool][0], sr + VARIANTS[tool][1]
    t = {"stage one": run_timed(f"{tool}.train-base", base + SMOKE_BASE * a.smoke, env, a.logs),
         "stage two": run_timed(f"{tool}.train-sr", sr + SMOKE_SR * a.smoke, env, a.logs),
         "first render": run_timed(f"{tool}.render", [*cli, "render", "--run", str(run), "--num-images", "1",
                                   "--out", str(work / "first"), f"a [V] {a.cls} on the beach"], env, a.logs)}
    return t, run, json.loads((run / "run.json").read_text())["identifier"]


def diffusers_args(a: argparse.Namespace, model: str, photos: Path, out: Path, prompt: str, resolution: int,
                   steps: int, lr: float, rank: int | None, batch: int, checkpointing: int = 1_000_000,
                   precision: str = "no") -> list[str]:
    """Their script's command line: ``train_dreambooth_lora.py`` at LoRA ``rank``, ``train_dreambooth.py`` (a full
    fine-tune) when ``rank`` is None; ``checkpointing``: their ``--checkpointing_steps`` (default: none);
    ``precision``: their ``--mixed_precision`` ("no" or "bf16")."""
    steps = min(steps, 4) if a.smoke else steps
    script = a.diffusers_script if rank is not None else a.diffusers_full_script
    adapter = ["--rank", str(rank)] if rank is not None else ["--skip_save_text_encoder"]
    return [sys.executable, str(SHIM), str(script), "--pretrained_model_name_or_path", str(MODELS / model),
            "--instance_data_dir", str(photos), "--instance_prompt", prompt, "--output_dir", str(out), "--seed", "0",
            "--resolution", str(resolution), "--center_crop", "--train_batch_size", str(batch), "--max_train_steps",
            str(steps), "--checkpointing_steps", str(checkpointing), "--learning_rate", str(lr), "--lr_scheduler",
            "constant", "--lr_warmup_steps", "0", "--max_grad_norm", "1.0", *adapter,
            "--mixed_precision", precision, "--dataloader_num_workers", "0", "--pre_compute_text_embeddings",
            "--tokenizer_max_length", "77", "--text_encoder_use_attention_mask"]


def equal_commands(a: argparse.Namespace, photos: Path, work: Path, prompt: str, checkpointing: int = 1_000_000,
                   base_steps: int | None = None) -> tuple[list[str], list[str]]:
    """diffusers-equal: their script with the world preset's steps / lr / rank / batch / class images, both stages
    (``base_steps``: stage one's steps instead of the preset's)."""
    preset = load_config("world")  # equal to what cascade-booth trains
    base, sr, pp = preset.base, preset.sr, preset.prior
    prior = ["--with_prior_preservation", "--prior_loss_weight", f"{pp.weight:g}", "--class_prompt", f"a {a.cls}",
             "--class_data_dir", str(work / "class"), "--num_class_images", "4" if a.smoke else str(pp.class_images),
             "--sample_batch_size", str(pp.batch_size)]
    # the precision the preset resolves to on this machine (world.toml's "auto": bf16 where the CPU has it)
    p1, p2 = (compute_precision(stage.mixed_precision, device()) for stage in (base, sr))
    s1 = diffusers_args(a, "base", photos, work / "base", prompt, 32, base_steps or base.steps, base.lr,
                        base.lora_rank, base.batch_size, checkpointing, p1)
    s2 = diffusers_args(a, "sr", photos, work / "sr", prompt, 128, sr.steps, sr.lr, None if sr.full else sr.lora_rank,
                        sr.batch_size, precision=p2)
    s1, s2 = s1 + prior, s2 + ["--class_labels_conditioning", "timesteps"]
    return s1, s2


def diffusers(a: argparse.Namespace, tool: str, photos: Path, work: Path, ident: str, env: dict) -> dict:
    """Train with diffusers' script (equal or recommended settings), then render once; returns timings.
    ``diffusers-pretrained`` trains nothing: the same rendering without LoRA, the baseline of the diffusers rows."""
    photos = photos.parent / "photos"  # their script opens every file of the folder as an image: PNGs only
    prompt, render = f"a {ident} {a.cls}", [sys.executable, str(Path(__file__).with_name("bench_world_render.py"))]
    if tool == "diffusers-pretrained":
        run_timed(f"{tool}.quality", [*render, "--identifier", ident, "--class-noun", a.cls, "--out",
                                      str(work / "quality"), "--num-images", str(a.images)], env, a.logs)
        return {}
    if tool == "diffusers-equal":
        s1, s2 = equal_commands(a, photos, work, prompt)
    else:
        s1 = diffusers_args(a, "base", photos, work / "base", prompt, 32, 1200, 5e-6, 4, 4) + ["--scale_lr"]
        s2 = None
    t = {"stage one": run_timed(f"{tool}.stage1", s1, env, a.logs)}
    if s2:
        t["stage two"] = run_timed(f"{tool}.stage2", s2, env, a.logs)
    sr = []  # stage two: their full script's UNet or their LoRA folder
    if s2:
        full = (work / "sr" / "unet").is_dir()
        sr = ["--sr-unet", str(work / "sr" / "unet")] if full else ["--sr-lora", str(work / "sr")]
    t["first render"] = run_timed(f"{tool}.render", [*render, "--base-lora", str(work / "base"), *sr, "--identifier",
                                  ident, "--class-noun", a.cls, "--out", str(work / "first"), "--first"], env, a.logs)
    run_timed(f"{tool}.quality", [*render, "--base-lora", str(work / "base"), *sr, "--identifier", ident,
                                  "--class-noun", a.cls, "--out", str(work / "quality"), "--num-images", str(a.images)],
              env, a.logs)
    return t


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--diffusers-script", type=Path, required=True, help="diffusers' train_dreambooth_lora.py")
    p.add_argument("--diffusers-full-script", type=Path, help="diffusers' train_dreambooth.py: diffusers-equal's "
                   "stage two when the preset fine-tunes stage two fully ([sr] full)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--subject", default="clock:7", help="CLASS:SEED (world subject)")
    p.add_argument("--images", type=int, default=2, help="images per prompt for the quality read-back")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="4 + 2 training steps: checks every path, measures nothing")
    p.add_argument("--only", default=",".join(TOOLS), help="comma-separated tools (cascade-booth always runs first)")
    a = p.parse_args(argv)
    if load_config("world").sr.full and "diffusers-equal" in a.only.split(",") and not a.diffusers_full_script:
        p.error("the world preset fine-tunes stage two fully: give --diffusers-full-script (their train_dreambooth.py)")
    a.cls, seed = a.subject.split(":")
    out = a.out.resolve()
    a.logs = out / "logs"
    a.logs.mkdir(parents=True, exist_ok=True)
    env = env_for(a.threads, out / "cache")
    photos = out / "subject"
    if not (photos / "subject.json").exists():
        subprocess.run([sys.executable, "-m", "cascade_booth.cli", "world", "subject", "--class", a.cls, "--seed", seed,
                        "--out", str(photos)], env=env, check=True)
    (out / "photos").mkdir(exist_ok=True)
    for png in photos.glob("*.png"):
        (out / "photos" / png.name).write_bytes(png.read_bytes())
    command = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    results = {"command": command, "threads": a.threads, "tools": {}}
    saved = out / "results.json"
    if saved.exists():  # an earlier call's tools (and ground truth) are kept
        earlier = json.loads(saved.read_text())
        results["tools"] = earlier["tools"]
        results.update({k: earlier[k] for k in ("truth",) if k in earlier})
    for tool in [t for t in TOOLS if t in a.only.split(",") or t == "cascade-booth"]:
        if "quality" in results["tools"].get(tool, {}):
            continue  # done in an earlier call
        work, env = out / tool, env_for(a.threads, out / "cache" / tool)
        if tool.startswith("cascade-booth"):
            timings, run, ident = cascade_booth(a, tool, photos, work, env)
            subprocess.run([sys.executable, "-m", "cascade_booth.cli", "world", "score", "--run", str(run), "--subject",
                            str(photos), "--out", str(work / "quality"), "--num-images", str(a.images)], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            results.setdefault("identifier", ident)
        else:
            ident = json.loads((out / "cascade-booth" / "run" / "run.json").read_text())["identifier"]
            timings = diffusers(a, tool, photos, work, ident, env)
            link = work / "quality" / "pretrained"
            if not link.exists():
                link.symlink_to(out / "cascade-booth" / "quality" / "pretrained")
        results["tools"][tool] = {"time": timings, "quality": quality(work / "quality", photos)}
        write_results(out, results)
    for tool in results["tools"]:  # stage one's own output, where a 32 px subject is read without SR noise
        if "quality32" not in results["tools"][tool]:
            env = env_for(a.threads, out / "cache" / tool)
            results["tools"][tool]["quality32"] = quality32(a, tool, out, photos, env)
            write_results(out, results)
    if "truth" not in results:  # the subject itself in each context: each metric's ceiling here
        results["truth"] = {name: quality(truth(out, a.cls, int(seed), name, per, size), photos)
                            for name, per, size in (("quality", a.images, 128), ("quality32", 4, 32))}
        write_results(out, results)
    print((out / "results.md").read_text())


def truth(out: Path, cls: str, seed: int, name: str, per_context: int, size: int) -> Path:
    """``draw_truth`` into OUT/ground-truth/NAME, beside cascade-booth's pretrained renders of the same size."""
    folder = draw_truth(out / "ground-truth" / name, cls, seed, per_context, size)
    if not (folder / "pretrained").exists():
        (folder / "pretrained").symlink_to(out / "cascade-booth" / name / "pretrained")
    return folder


def quality32(a: argparse.Namespace, tool: str, out: Path, photos: Path, env: dict) -> dict:
    """Stage one alone: every [V] and class prompt, 4 images each, at 32 px, read back like the 128 px set."""
    work, folder = out / tool, out / tool / "quality32"
    if tool.startswith("cascade-booth"):
        subprocess.run([sys.executable, "-m", "cascade_booth.cli", "world", "score", "--run", str(work / "run"),
                        "--subject", str(photos), "--out", str(folder), "--num-images", "4", "--no-sr"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
    else:
        ident = json.loads((out / "cascade-booth" / "run" / "run.json").read_text())["identifier"]
        lora = ["--base-lora", str(work / "base")] if (work / "base").is_dir() else []
        run_timed(f"{tool}.quality32", [sys.executable, str(Path(__file__).with_name("bench_world_render.py")), *lora,
                                        "--identifier", ident, "--class-noun", a.cls, "--out", str(folder),
                                        "--num-images", "4", "--no-sr"], env, a.logs)
        if not (folder / "pretrained").exists():
            (folder / "pretrained").symlink_to(out / "cascade-booth" / "quality32" / "pretrained")
    return quality(folder, photos)


if __name__ == "__main__":
    main()
