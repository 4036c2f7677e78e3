"""cascade-booth vs diffusers' DreamBooth LoRA script: stage-one and stage-two step time, peak memory, class images/s.

One command runs both tools, each as its own child process, at equal settings on the same model folders::

    python tools/bench.py --diffusers-script /tmp/bench-diffusers/train_dreambooth_lora.py       # CPU
    python tools/bench.py --diffusers-script ... --smoke     # every path, tiny UNets, measures nothing

On an H100 (real IF-I-XL / IF-II-L, bf16) split in two calls to stay under a 10-minute limit per call,
then merge: ``python tools/bench_report.py s1.json s2.json`` (``tools/cpu-results.md`` has the lines)::

    python tools/bench.py --diffusers-script ... --device cuda --sections stage1 --json $OUT/s1.json
    python tools/bench.py --diffusers-script ... --device cuda --sections stage2 gen --json $OUT/s2.json

Models (random weights, ``tools/if_configs.py``): an ``IFPipeline`` folder around the stage-one UNet
(``--unet``; CPU default ``cpu-100m``, 87.5M params, IF-I-XL's layout at 64/704 width; CUDA default the
real ``IF-I-XL-v1.0``) and an ``IFSuperResolutionPipeline`` folder around the stage-two UNet (``--sr-unet``;
CPU default ``cpu-sr``, 97M params, IF-II-L's layout at 32/160 width; CUDA default ``IF-II-L-v1.0``) at
``--sr-resolution`` (default 256, IF-II's own). Both share a tiny sentencepiece T5 tokenizer and a
random 2-layer T5 encoder of IF's 4096-d width (256 with ``--smoke``): prompts are embedded once per
run (cascade-booth reads its embedding cache, filled by an untimed warm-up run; diffusers runs
``--pre_compute_text_embeddings`` at start-up), so the encoder's size is in start-up time only.

Sections (``--sections``, default all three):

* ``stage1``: 64 px LoRA steps with prior preservation, 1 instance + 1 class image per step (2 samples
  per UNet forward): cascade-booth ``train-base --prior --batch-size 1``, diffusers
  ``--with_prior_preservation --train_batch_size 1``. The 4 class images come from the warm-up run
  (cascade-booth, DDPM 2 steps) and are copied for diffusers: no timed run generates any.
* ``stage2``: SR LoRA steps at ``--sr-resolution``, 1 sample per step. cascade-booth ``train-sr`` on a copy
  of the warm-up run feeds the UNet [noisy target, upsampled + noise-augmented 64 px photo] with the
  augmentation level (default 100) as class label, as IF's SR pipeline does at inference. diffusers
  (``--class_labels_conditioning timesteps``) feeds [noisy target, the same noisy target] with the
  diffusion timestep as class label. Shapes and FLOPs are equal; what is learned is not.
* ``gen``: class-image generation, measured by difference: the same command (train 1 step with prior)
  run twice, first with no class images (it generates ``--class-images`` of them, batch ``--gen-batch``),
  then again with them present; generation time = t(first) - t(second). This includes loading the
  sampling pipeline. diffusers' script cannot be told the sampling steps: it calls the folder's
  ``IFPipeline`` with its defaults (read at run time: 100 steps, the folder's DDPM scheduler, guidance
  7). cascade-booth is timed with exactly that (``prior.sampler = "ddpm"``, ``sample_steps = 100``) and,
  as a second row, with its own defaults (DPM-Solver++, 25 steps). Reported: images/s and
  sample-evaluations/s = images * steps * 2 (classifier-free guidance) / time. Sampling dtype: fp32 on
  the CPU, bf16 on CUDA for both (``--prior_generation_precision``).

Shared settings: LoRA rank 4 on the same attention projections, AdamW lr 1e-4 constant, grad-norm clip
1.0, ``--mixed-precision`` (CPU default ``no``, CUDA default ``bf16``; cascade-booth
``--mixed-precision``, diffusers ``--mixed_precision``), no checkpoints, no validation, seed 0, the same
4 subject photos (256 px), ``OMP_NUM_THREADS=--threads``. diffusers trains epsilon only (drops the
variance channels); cascade-booth is timed with each ``--variance`` (``learned`` adds IF's VLB term).

Per-step time is a difference of two runs, ``(t(N2) - t(N1)) / (N2 - N1)``, so start-up (imports, model
load, embeddings, saving, diffusers' final pipeline reload) cancels; start-up is reported as
``t(N1) - N1 * step``. CPU seconds (user + sys of the child) are reported beside wall seconds. Runs
are interleaved across tools (A n1, B n1, A n2, B n2, ...) so that load from other processes hits all
alike; the 1-minute load average is logged before and after each run. Interleaving does not make a
shared machine fair: with 2 OpenMP threads on 2 cores, one busy neighbour made a 100-step generation run
3x slower (98 s vs 31 s quiet; 44 s with 1 thread) and heavier load 10x, so on a shared machine pass
``--threads 1``, and take numbers for the record only from a quiet one. Peak memory: max RSS of the child
(``os.wait4``), the larger of its runs; on CUDA also ``torch.cuda.max_memory_reserved()`` / ``_allocated()``
of the child, recorded at its exit by ``tools/bench_launch.py``, through which both tools are started.

diffusers' script is third-party code: keep it outside this repo (``git --git-dir=<diffusers mirror> show
HEAD:examples/dreambooth/train_dreambooth_lora.py > /tmp/bench-diffusers/train_dreambooth_lora.py``). It
imports torchvision for its image transforms only; where no torchvision is installed (this CPU machine:
there is no CPU build for its torch), its run gets ``tools/torchvision_shim`` (PIL/torch versions of the
few transforms it calls on 64-256 px images). Where a real torchvision exists (the GPU image), it is used.

Results: ``WORK/results.json`` (every run, command, load, machine, versions; sections from earlier calls
with the same fixtures are kept, so split GPU calls add up) and Markdown tables printed at the end.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_fixtures as fx  # a sibling: ``python tools/bench.py`` puts tools/ first on sys.path
from bench_gen import gen_tools, measure_gen
from bench_report import tables
from if_configs import is_stage2, resolve

SECTIONS = ("stage1", "stage2", "gen")


@dataclass
class Tool:
    name: str
    tag: str
    command: Callable[[int, Path], list[str]]  # (steps, output/run folder) -> argv
    env: dict
    prep: Callable[[Path], None] | None = None


# ----------------------------------------------------------------------------------------- fixtures
def prepare(setup: fx.Setup) -> dict:
    """Model folders, photos, configs; one untimed cascade-booth run fills the class-image and embedding
    caches (its class images are then copied for diffusers) and leaves a finished stage one for ``train-sr``."""
    work = setup.work
    info_file = work / "fixtures.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("signature") == setup.signature():
            return info
        fx.log(f"fixtures in {work} were built for {info.get('signature')}: rebuilding")
    for sub in ("model-base", "model-sr", "subject", "cache", "class_images", "runs", "gen", "results.json"):
        path = work / sub
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    fx.log(f"building model folders in {work} ({setup.unet}, {setup.sr_unet} at {setup.sr_resolution} px)")
    info = fx.build_models(setup)
    fx.make_subject(setup.subject, max(256, setup.sr_resolution))
    fx.log("warm-up cascade-booth run (class images + embedding cache + finished stage one; not timed)")
    warm = work / "runs" / "warmup"
    warm.parent.mkdir(parents=True, exist_ok=True)
    cfg = fx.write_config(work / "cascade-learned.toml", setup, "learned")
    fx.run_measured(fx.cascade_base_cmd(setup, warm, 1, cfg), fx.tool_env(setup, work / "cache"), work / "warmup.log")
    meta = json.loads((warm / "run.json").read_text())
    pngs = sorted((work / "cache" / "class_images").glob("*/*.png"))
    if len(pngs) != fx.N_CLASS:
        raise RuntimeError(f"expected {fx.N_CLASS} cached class images, found {len(pngs)}")
    dst = work / "class_images"
    dst.mkdir()
    for p in pngs:
        shutil.copy2(p, dst / p.name)
    info.update(signature=setup.signature(), instance_prompt=meta["instance_prompt"],
                class_prompt=meta["class_prompt"], warmup_run=str(warm))
    info_file.write_text(json.dumps(info, indent=2))
    return info


def copy_warmup(info: dict) -> Callable[[Path], None]:
    """A fresh stage-two run folder: the warm-up run's finished stage one, no stage two."""
    def prep(run_dir: Path) -> None:
        shutil.copytree(info["warmup_run"], run_dir, ignore=shutil.ignore_patterns("sr", "checkpoints*", "*.lock"))
    return prep


# ------------------------------------------------------------------------------------ step sections
def step_tools(section: str, setup: fx.Setup, info: dict, variances: list[str], compiled: bool = False
               ) -> list[Tool]:
    env = fx.tool_env(setup, setup.work / "cache")
    tools = []
    train = fx.cascade_base_cmd if section == "stage1" else fx.cascade_sr_cmd
    for variance, compile_unet in [(v, c) for v in variances for c in ([False, True] if compiled else [False])]:
        tag = f"cascade-{variance}{'-compile' if compile_unet else ''}"
        cfg = fx.write_config(setup.work / f"{tag}.toml", setup, variance, compile_unet=compile_unet)
        tools.append(Tool(f"cascade-booth (variance={variance}{', --compile' if compile_unet else ''})", tag,
                          functools.partial(_swap, train, setup, cfg), env,
                          copy_warmup(info) if section == "stage2" else None))
    if setup.diffusers_script:
        if section == "stage1":
            extra = fx.diffusers_prior_args(setup, setup.work / "class_images", info["class_prompt"], fx.N_CLASS, 4)
            model, res = setup.base_model, fx.info_resolution(setup.base_model)
        else:
            extra, model, res = ["--class_labels_conditioning", "timesteps"], setup.sr_model, setup.sr_resolution
        def diffusers(n: int, d: Path) -> list[str]:
            return fx.diffusers_cmd(setup, model, d, n, info["instance_prompt"], res) + extra

        tools.append(Tool(fx.DIFFUSERS, "diffusers", diffusers, env))
    return tools


def _swap(train: Callable, setup: fx.Setup, cfg: Path, n: int, run_dir: Path) -> list[str]:
    return train(setup, run_dir, n, cfg)


def measure_steps(section: str, tools: list[Tool], work: Path, steps: tuple[int, int], repeats: int) -> dict:
    n1, n2 = steps
    runs: dict[str, dict[int, list]] = {t.name: {n1: [], n2: []} for t in tools}
    cmds: dict[str, list[str]] = {}
    for rep in range(repeats):
        for n in (n1, n2):
            for tool in tools:
                out_dir = work / "runs" / section / f"{tool.tag}-n{n}-r{rep}"
                shutil.rmtree(out_dir, ignore_errors=True)
                out_dir.parent.mkdir(parents=True, exist_ok=True)
                if tool.prep:
                    tool.prep(out_dir)
                fx.log(f"{section} {tool.name}: {n} steps (repeat {rep + 1}/{repeats})")
                m = fx.run_measured(tool.command(n, out_dir), tool.env, out_dir.with_suffix(".log"))
                fx.log_run(m)
                runs[tool.name][n].append(m)
                cmds[tool.name] = tool.command(n2, out_dir.with_name(f"{tool.tag}-n{n2}-r{rep}"))
    rows = [dict(step_row(runs[t.name], n1, n2), tool=t.name, cmd=cmds[t.name]) for t in tools]
    return dict(steps=[n1, n2], repeats=repeats, date=time.strftime("%Y-%m-%d %H:%M %Z"), rows=rows)


def step_row(res: dict[int, list], n1: int, n2: int) -> dict:
    row: dict = {}
    for key in ("wall", "cpu"):
        t1 = statistics.median(r[f"{key}_s"] for r in res[n1])
        t2 = statistics.median(r[f"{key}_s"] for r in res[n2])
        step = (t2 - t1) / (n2 - n1)
        row.update({f"startup_{key}_s": t1 - n1 * step, f"step_{key}_s": step})
    return dict(row, **fx.peaks(res[n1] + res[n2]), runs={str(n): res[n] for n in (n1, n2)})


# ---------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diffusers-script", type=Path, default=None,
                   help="diffusers' examples/dreambooth/train_dreambooth_lora.py (kept outside the repo); "
                        "without it only cascade-booth is timed")
    p.add_argument("--work", type=Path, default=None, help="scratch folder, reused between calls "
                   "(default /tmp/cascade-booth-bench-DEVICE, -smoke with --smoke)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--unet", default=None, help="stage-one UNet config (tools/if_configs.py): cpu-100m (CPU "
                   "default), if-i-xl (CUDA default), if-i-l, if-i-m, cpu-tiny")
    p.add_argument("--sr-unet", default=None, help="stage-two UNet config: cpu-sr (CPU default), if-ii-l "
                   "(CUDA default), if-ii-m, cpu-tiny-sr")
    p.add_argument("--sr-resolution", type=int, default=None, help="stage-two resolution (default 256, IF-II's)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="both tools' training precision (default: no on CPU, bf16 on CUDA)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--steps", type=int, nargs=2, default=None, metavar=("N1", "N2"), help="default 2 5")
    p.add_argument("--repeats", type=int, default=1, help="runs per step count; medians are used")
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads, both tools (default: the usable "
                   "cores; 1 with --smoke). On a shared machine use 1: OpenMP threads that wait on a core taken by "
                   "another process slow runs down several-fold")
    p.add_argument("--variance", nargs="+", default=None, choices=["learned", "fixed"],
                   help="cascade-booth variance setting(s) to time (default both; diffusers trains epsilon only)")
    p.add_argument("--compile", action="store_true", help="also time cascade-booth with torch.compile (its "
                   "compile time falls into start-up, not into the per-step difference)")
    p.add_argument("--class-images", type=int, default=None, help="images generated in the gen section "
                   "(default 4 on CPU, 16 on CUDA)")
    p.add_argument("--gen-batch", type=int, default=None, help="sampling batch, both tools (default 4 CPU, 8 CUDA)")
    p.add_argument("--smoke", action="store_true", help="tiny UNets (cpu-tiny, cpu-tiny-sr at 128 px) on 256-d "
                   "text states, steps 1 2, 2 class images, 1 thread, cascade-booth variance learned only: checks "
                   "every path, measures nothing")
    p.add_argument("--json", type=Path, default=None, help="results file (default WORK/results.json)")
    return p


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, fx.Setup]:
    """Options, with the defaults that depend on --device and --smoke filled in."""
    p = _parser()
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    tiny = a.smoke
    a.steps = a.steps or ((1, 2) if tiny else (2, 5))
    a.variance = a.variance or (["learned"] if tiny else ["learned", "fixed"])
    if a.steps[1] <= a.steps[0] or a.steps[0] < 1:
        p.error("--steps N1 N2 needs 1 <= N1 < N2")
    try:
        unet = resolve(a.unet or ("cpu-tiny" if tiny else "IF-I-XL-v1.0" if cuda else "cpu-100m"))
        sr_unet = resolve(a.sr_unet or ("cpu-tiny-sr" if tiny else "IF-II-L-v1.0" if cuda else "cpu-sr"))
    except KeyError as err:
        p.error(str(err))
    setup = fx.Setup(
        work=(a.work or Path(f"/tmp/cascade-booth-bench-{a.device}{'-smoke' if tiny else ''}")).resolve(),
        device=a.device, precision=a.mixed_precision or ("bf16" if cuda else "no"),
        unet=unet, sr_unet=sr_unet,
        sr_resolution=a.sr_resolution or (128 if tiny else 256),
        threads=a.threads or (1 if tiny else len(os.sched_getaffinity(0))),
        gen_images=a.class_images or (2 if tiny else 16 if cuda else 4),
        gen_batch=a.gen_batch or (2 if tiny else 8 if cuda else 4),
        diffusers_script=a.diffusers_script.resolve() if a.diffusers_script else None,
        shim=importlib.util.find_spec("torchvision") is None,
        t5_dim=256 if tiny else 4096,
    )
    if is_stage2(setup.unet) or not is_stage2(setup.sr_unet):
        p.error("--unet must be a stage-one (3-channel) config and --sr-unet a stage-two (6-channel) one")
    return a, setup


def check_device(setup: fx.Setup) -> None:
    if setup.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")


def load_results(path: Path, info: dict) -> dict:
    """Earlier sections measured on the same fixtures are kept (split GPU calls add up)."""
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fixtures", {}).get("signature") == info.get("signature"):
            return old
    return {"sections": {}}


def main(argv: list[str] | None = None) -> None:
    args, setup = parse(argv)
    check_device(setup)
    fx.log(f"device {setup.device}, precision {setup.precision}, work {setup.work}, sections {args.sections}")
    info = prepare(setup)
    out = args.json or setup.work / "results.json"
    res = load_results(out, info)
    res.update(fixtures=info, machine=fx.machine(setup.device), versions=fx.versions(setup),
               settings=dict(device=setup.device, precision=setup.precision, threads=setup.threads,
                             sr_resolution=setup.sr_resolution, smoke=args.smoke, argv=sys.argv))
    for section in args.sections:
        if section == "gen":
            res["sections"][section] = measure_gen(gen_tools(setup, info), setup, args.repeats)
        else:
            tools = step_tools(section, setup, info, args.variance, args.compile)
            res["sections"][section] = measure_steps(section, tools, setup.work, tuple(args.steps), args.repeats)
        res["sections"][section]["settings"] = res["settings"]
        res["machine"]["load1_end"] = os.getloadavg()[0]
        out.write_text(json.dumps(res, indent=2, default=str))
    print()
    print(tables(res))
    print(f"\nall measurements: {out}")


if __name__ == "__main__":
    main()
