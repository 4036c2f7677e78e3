"""Training checkpoints as safetensors + JSON only (nothing pickled), written atomically.

``step-N/`` holds the trainable weights, the optimizer moments, the LR schedule and the step. The
data order and every random draw are functions of (seed, step), so these are all a resume needs to
continue bit-for-bit. A checkpoint without its ``COMPLETE`` marker is never read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cascade_booth.config import StageConfig
from cascade_booth.errors import RunError
from cascade_booth.lora import load_trainable_state, trainable_state
from cascade_booth.runfolder import checkpoint_steps, new_checkpoint

# Fault-injection point for tests: called with each file's path right after it is written.
WRITE_HOOK: Callable[[Path], None] | None = None


def _written(path: Path) -> None:
    if WRITE_HOOK is not None:
        WRITE_HOOK(path)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(root: Path, step: int, job, optimizer, schedule, cfg: StageConfig) -> Path:
    """Write ``root/step-<step>`` atomically and prune to ``cfg.keep_checkpoints``."""
    with new_checkpoint(root, step, cfg.keep_checkpoints) as tmp:
        save_file(trainable_state(job.unet, cfg.full), str(tmp / "weights.safetensors"))
        _written(tmp / "weights.safetensors")
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        _written(tmp / "optimizer.safetensors")
        trainer = {"step": step, "schedule": schedule.state_dict(), "optimizer": meta}
        (tmp / "trainer.json").write_text(json.dumps(trainer, default=_jsonable))
        _written(tmp / "trainer.json")
    return root / f"step-{step}"


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def latest(root: Path) -> Path | None:
    steps = checkpoint_steps(root)
    return root / f"step-{steps[-1]}" if steps else None


def restore(root: Path, job, optimizer, schedule, full: bool) -> int:
    """Load the newest complete checkpoint into job/optimizer/schedule; returns its step (0 if none)."""
    folder = latest(root)
    if folder is None:
        return 0
    try:
        load_trainable_state(job.unet, load_file(str(folder / "weights.safetensors")), full)
        trainer = json.loads((folder / "trainer.json").read_text())
        opt_state = _unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), trainer["optimizer"])
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise RunError(f"{folder}: checkpoint cannot be read ({err}); delete it to resume from an older one") from None
    optimizer.load_state_dict(opt_state)
    schedule.load_state_dict(trainer["schedule"])
    return int(trainer["step"])
