"""The class-image generation section of ``tools/bench.py``: each tool's time to generate the class images.

Measured by difference (``tools/bench.py``'s docstring, section ``gen``): the same one-step training command with
no class images present, then with them; generation time = t(first) - t(second).
"""

from __future__ import annotations

import inspect
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import bench_fixtures as fx  # a sibling: ``python tools/bench.py`` puts tools/ first on sys.path


@dataclass
class _GenTool:
    """One row of the generation section: a tool, its sampler and step count."""

    name: str
    tag: str
    sampler: str
    steps: int
    setup: fx.Setup


@dataclass
class CascadeGen(_GenTool):
    """cascade-booth ``train-base --prior --steps 1`` with a class-image cache of its own per repeat."""

    config: Path

    def cache(self, rep: int) -> Path:
        return self.setup.work / "gen" / f"{self.tag}-r{rep}-cache"

    def command(self, out_dir: Path, rep: int) -> list[str]:
        return fx.cascade_base_cmd(self.setup, out_dir, 1, self.config)

    def env(self, rep: int) -> dict:
        return fx.tool_env(self.setup, self.cache(rep))

    def reset(self, rep: int) -> None:
        """A cache with the warm text embeddings and no class images."""
        shutil.rmtree(self.cache(rep), ignore_errors=True)
        shutil.copytree(self.setup.work / "cache" / "embeddings", self.cache(rep) / "embeddings")

    def count(self, rep: int) -> int:
        return len(list((self.cache(rep) / "class_images").glob("*/*.png")))


@dataclass
class DiffusersGen(_GenTool):
    """diffusers' script, 1 training step with prior preservation and an empty ``--class_data_dir``."""

    info: dict

    def class_dir(self, rep: int) -> Path:
        return self.setup.work / "gen" / f"{self.tag}-r{rep}-class"

    def command(self, out_dir: Path, rep: int) -> list[str]:
        s = self.setup
        resolution = fx.info_resolution(s.base_model)
        cmd = fx.diffusers_cmd(s, s.base_model, out_dir, 1, self.info["instance_prompt"], resolution)
        return cmd + fx.diffusers_prior_args(s, self.class_dir(rep), self.info["class_prompt"], s.gen_images,
                                             s.gen_batch)

    def env(self, rep: int) -> dict:
        return fx.tool_env(self.setup, self.setup.work / "cache")

    def reset(self, rep: int) -> None:
        shutil.rmtree(self.class_dir(rep), ignore_errors=True)
        self.class_dir(rep).mkdir(parents=True)

    def count(self, rep: int) -> int:
        return len(list(self.class_dir(rep).iterdir()))


def gen_tools(setup: fx.Setup, info: dict) -> list[CascadeGen | DiffusersGen]:
    steps = diffusers_gen_steps()
    rows = [(f"cascade-booth (= diffusers: DDPM, {steps} steps)", "cascade-equal", "ddpm", steps),
            ("cascade-booth (own default: DPM-Solver++, 25 steps)", "cascade-default", "dpm++", 25)]
    tools: list[CascadeGen | DiffusersGen] = []
    for name, tag, sampler, n_steps in rows:
        cfg = fx.write_config(setup.work / f"{tag}.toml", setup, "learned", sampler, n_steps, setup.gen_images,
                              setup.gen_batch)
        tools.append(CascadeGen(name, tag, sampler, n_steps, setup, cfg))
    if setup.diffusers_script:
        tools.append(DiffusersGen(f"{fx.DIFFUSERS} (IFPipeline defaults: DDPM, {steps} steps)", "diffusers", "ddpm",
                                  steps, setup, info))
    return tools


def diffusers_gen_steps() -> int:
    """``IFPipeline.__call__``'s default ``num_inference_steps``: what diffusers' script samples with."""
    from diffusers import IFPipeline

    return int(inspect.signature(IFPipeline.__call__).parameters["num_inference_steps"].default)


def measure_gen(tools: list[CascadeGen | DiffusersGen], setup: fx.Setup, repeats: int) -> dict:
    runs: dict[str, dict[str, list]] = {t.name: {"generate": [], "cached": []} for t in tools}
    for rep in range(repeats):
        for t in tools:
            t.reset(rep)
        for phase in ("generate", "cached"):
            for t in tools:
                out_dir = setup.work / "runs" / "gen" / f"{t.tag}-{phase}-r{rep}"
                shutil.rmtree(out_dir, ignore_errors=True)
                out_dir.parent.mkdir(parents=True, exist_ok=True)
                fx.log(f"gen {t.name}: {phase} (repeat {rep + 1}/{repeats})")
                m = fx.run_measured(t.command(out_dir, rep), t.env(rep), out_dir.with_suffix(".log"))
                m["class_images_after"] = t.count(rep)
                if m["class_images_after"] < setup.gen_images:
                    raise RuntimeError(f"{t.name}: {m['class_images_after']} class images after the run, "
                                       f"expected {setup.gen_images}")
                fx.log_run(m)
                runs[t.name][phase].append(m)
    rows = []
    for t in tools:
        row = dict(tool=t.name, sampler=t.sampler, steps=t.steps, images=setup.gen_images, batch=setup.gen_batch)
        for key in ("wall", "cpu"):
            gen_s = (statistics.median(r[f"{key}_s"] for r in runs[t.name]["generate"])
                     - statistics.median(r[f"{key}_s"] for r in runs[t.name]["cached"]))
            row[f"gen_{key}_s"] = gen_s
        row["images_per_s"] = setup.gen_images / row["gen_wall_s"]
        row["sample_evals_per_s"] = setup.gen_images * t.steps * 2 / row["gen_wall_s"]
        rows.append(dict(row, **fx.peaks(runs[t.name]["generate"]), runs=runs[t.name],
                         cmd=t.command(setup.work / "runs" / "gen" / f"{t.tag}-generate-r0", 0)))
    return dict(repeats=repeats, date=time.strftime("%Y-%m-%d %H:%M %Z"), rows=rows)
