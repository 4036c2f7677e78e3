"""The world pretraining's settings per segment, and the model card that lists them (``tools/pretrain_world.py``).

A segment is one ``pretrain_world.py`` run that continued from the shipped weights (``--init-from-shipped``); each
may change any of SETTINGS. ``pretrain.json`` beside the exported weights lists each setting per segment
(``"<name>s"``), and MODEL_CARD.md turns them back into each segment's command line.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

SEED = {"base": 1, "sr": 2}
# x0_weight_cap: the cap of losses.x0_weights (1 = IF's plain epsilon objective); offset_noise: that of
# diffusion.training_losses (0 = IF's plain noise). A later segment may change any of SETTINGS; pretrain.json lists
# each per segment.
DEFAULTS = {"base": dict(batch=32, lr=5e-4, x0_weight_cap=1.0, offset_noise=0.0, ema=0.999),
            "sr": dict(batch=12, lr=5e-4, x0_weight_cap=20.0, offset_noise=0.0, ema=0.999)}
SETTINGS = ("x0_weight_cap", "offset_noise", "ema", "lr")  # per segment: pretrain.json's "<name>s", the card's --flag


def _old_x0_cap(saved: dict) -> dict[str, float]:
    """States and cards written before SETTINGS name the x0-weight cap at their top level, stage two's as
    ``sr_weight_cap`` (or not at all: the default)."""
    cap = saved.get("x0_weight_cap", saved.get("sr_weight_cap"))
    return {} if cap is None else {"x0_weight_cap": cap}


def state_settings(model: str, state: dict) -> dict[str, float]:
    """The SETTINGS a pretraining state was trained with (a setting it does not name: the default)."""
    saved = state.get("settings", _old_x0_cap(state))
    return {name: saved.get(name, DEFAULTS[model][name]) for name in SETTINGS}


def segment_values(model: str, info: dict, name: str) -> list[float]:
    """One of SETTINGS for each segment of a pretrain.json; older cards name it once for all segments (the lr, the
    EMA, the x0-weight cap: ``_old_x0_cap``) or not at all (the default)."""
    if f"{name}s" in info:
        return info[f"{name}s"]
    default = {"lr": info.get("lr"), "ema": info.get("ema"), **_old_x0_cap(info)}.get(name)
    return [DEFAULTS[model][name] if default is None else default] * len(info.get("segments", [info["steps"]]))


def _flags(model: str, info: dict) -> list[str]:
    """Each segment's non-default settings as command-line flags (``--x0-weight-cap 20``)."""
    columns = [segment_values(model, info, name) for name in SETTINGS]
    return ["".join(f" --{name.replace('_', '-')} {value:g}" for name, value in zip(SETTINGS, values, strict=True)
                    if value != DEFAULTS[model][name])
            for values in zip(*columns, strict=True)]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


EVALUATOR_LR = {"attributes": 2e-3, "dino": 5e-4, "clip": 5e-4}  # tools/pretrain_world_evaluators.py's default --lr


def log_summary(rows: list[dict]) -> tuple[float, float | None]:
    """Wall hours and the mean loss of the last 200 rows of a ``losses.jsonl`` (rows ``{"step", "loss", "t"}``, ``t``
    in seconds since its process started: it restarts at 0 after a resume)."""
    wall, previous = 0.0, 0.0
    for r in rows:
        wall += r["t"] - previous if r["t"] >= previous else r["t"]
        previous = r["t"]
    last = [r["loss"] for r in rows[-200:]]
    return round(wall / 3600, 2), round(sum(last) / len(last), 4) if last else None


def segments_command(script: str, model: str, segments: list[int], flags: list[str]) -> str:
    """The command line of each pretraining segment: the first from scratch, each later one carried on from the
    shipped weights (``flags``: each segment's non-default settings, " --lr 0.002")."""
    cmd = f"`python tools/{script} --model {model} --steps N{flags[0]}` to step {segments[0]}"
    for end, extra in zip(segments[1:], flags[1:], strict=True):
        cmd += f", then `--steps {end} --init-from-shipped{extra}`"
    return cmd


def _evaluator_rows(out: Path) -> list[str]:
    """The evaluators trained by ``tools/pretrain_world_evaluators.py`` that have a ``pretrain.json``: each segment's
    command line (a later one ``--init-from-shipped``, its lr where not the default)."""
    rows = []
    for name, default in EVALUATOR_LR.items():
        if not (out / name / "pretrain.json").exists():
            continue
        info = json.loads((out / name / "pretrain.json").read_text())
        lrs = [f" --lr {lr:g}" if lr != default else "" for lr in info["lrs"]]
        cmd = segments_command("pretrain_world_evaluators.py", name, info["segments"], lrs)
        hours = info.get("wall_hours_per_segment", [info["wall_hours"]])
        wall = " + ".join("not recorded" if h is None else f"{h:g}" for h in hours)
        loss = info["final_loss_mean_last_200"]
        rows.append(f"| {name} | {cmd} | {info['steps']} | {wall} | {loss} |")
    if not rows:
        return []
    return ["", "Evaluators (the figures below read the cascade's samples with them):", "",
            "| evaluator | command | steps | wall hours | final loss (mean of last 200) |", "|---|---|---:|---:|---:|",
            *rows]


def write_model_card(out: Path) -> None:
    """MODEL_CARD.md beside the weights: how each model was made and what it measured (acceptance.json)."""
    lines = ["# The world models", "", "Made by committed scripts; every figure below was measured, with the command.",
             "", f"Exported at commit `{_commit()}` (the state was trained on the code of that commit or earlier).", "",
             "| model | command | steps | examples | wall hours | final loss (mean of last 200) |",
             "|---|---|---:|---:|---:|---:|"]
    for model in ("base", "sr"):
        info = json.loads((out / model / "pretrain.json").read_text())
        cmd = segments_command("pretrain_world.py", model, info.get("segments", [info["steps"]]), _flags(model, info))
        lines.append(f"| {model} | {cmd} | {info['steps']} | {info['examples']} | {info['wall_hours']} | "
                     f"{info['final_loss_mean_last_200']} |")
    lines += _evaluator_rows(out)
    acceptance = out / "acceptance.json"
    if acceptance.exists():
        cascade_run = json.loads(acceptance.read_text()).get("cascade", {})
        lines += ["", "## Acceptance (held-out designs)", "", "`python tools/world_acceptance.py --evaluators "
                  "--cascade --sr --out cascade_booth/world/models/acceptance.json`"]
        if cascade_run:
            lines.append(f"(cascade: {cascade_run['prompts']} prompts, one image each, {cascade_run['steps']} steps "
                         f"per stage, stage one's guidance {cascade_run['guidance']:g}, the world preset's stage two)")
        lines += ["", "```json", acceptance.read_text().strip(), "```"]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
