"""Training checkpoints as safetensors + JSON only (nothing pickled), written atomically.

``step-N/`` holds the trainable weights (and ``extras.safetensors``: a job's tensors outside the UNet,
``trainer.Extra``), the optimizer moments, the LR schedule, the step and the
count of skipped (non-finite) steps. The data order and every random draw are functions of
(seed, step), so these are all a resume needs to continue bit-for-bit.

A checkpoint is filled in a temporary folder, fsynced, marked ``COMPLETE`` and renamed into place
(``runfolder.new_checkpoint``); older ones are pruned only after that, so a crash, a kill or a full
disk at any point leaves the previous checkpoint intact, and a folder without its marker is never
read. A write error (disk full) becomes a ``CheckpointWriteError`` that names the checkpoint kept
and the space the write needs. Weights or optimizer moments that are not finite are never written
(``NonFiniteWeights``). ``save_final`` keeps the trained weights alone as the last checkpoint when
a stage's final weights cannot be written, so that ``--resume`` writes them without training again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from cascade_booth.config import StageConfig
from cascade_booth.diskspace import WRITE_ERRORS, file_bytes, reason, space_note
from cascade_booth.errors import InputError, RunError, TrainingAborted
from cascade_booth.lora import load_trainable_state, trainable_state
from cascade_booth.runfolder import checkpoint_steps, new_checkpoint
from cascade_booth.safeload import load_state_dict

# Fault-injection point for tests: called with each file's path right after it is written, then with
# the COMPLETE marker, then with the checkpoint folder once it is renamed into place.
WRITE_HOOK: Callable[[Path], None] | None = None
EXTRAS = "extras.safetensors"


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


class NonFiniteWeights(TrainingAborted):
    """The weights (or optimizer moments) hold NaN/inf; they are not saved."""


@dataclass
class Restored:
    step: int
    bad_steps: int
    folder: Path
    final: bool = False  # the weights alone (``save_final``): enough to finish the stage, not to train on
    updates: int = 0  # optimizer updates applied (skipped steps excluded): where the LR schedule stands


def _written(path: Path) -> None:
    if WRITE_HOOK is not None:
        WRITE_HOOK(path)


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``NonFiniteWeights`` naming the first tensor of ``tensors`` with a NaN or inf."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteWeights(
            f"{what} hold non-finite values ('{bad[0]}'{more}); they were not saved. "
            "Lower the learning rate, or use bf16 instead of fp16."
        )


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


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save(
    root: Path, step: int, job, optimizer, schedule, cfg: StageConfig, bad_steps: int = 0, scaler=None
) -> Path:
    """Write ``root/step-<step>`` atomically, then prune to ``cfg.keep_checkpoints``.

    ``scaler`` (fp16's grad scaler) is saved too: its loss scale decides how gradients round.
    """
    weights = trainable_state(job.unet, cfg.full)
    extras = extra_state(job.extras)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    check_finite(weights | extras, f"{job.name}: the weights at step {step}")
    check_finite(tensors, f"{job.name}: the optimizer moments at step {step}")
    trainer = {"step": step, "bad_steps": bad_steps, "schedule": schedule.state_dict(), "optimizer": meta,
               "scaler": scaler.state_dict() if scaler is not None else None}
    previous = latest(root)
    try:
        with new_checkpoint(root, step, cfg.keep_checkpoints, on_write=_written) as tmp:
            save_file(weights, str(tmp / "weights.safetensors"))
            _written(tmp / "weights.safetensors")
            if extras:
                save_file(extras, str(tmp / EXTRAS))
                _written(tmp / EXTRAS)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            _written(tmp / "optimizer.safetensors")
            (tmp / "trainer.json").write_text(json.dumps(trainer, default=_jsonable))
            _written(tmp / "trainer.json")
    except WRITE_ERRORS as err:
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        needed = file_bytes([*weights.values(), *extras.values(), *tensors.values()])
        raise CheckpointWriteError(
            f"could not write checkpoint step-{step} in {root}: {reason(err)}; {kept}; {space_note(root, needed)}. "
            "Free some disk space and run again with --resume."
        ) from None
    return root / f"step-{step}"


def extra_state(extras: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``trainer.Extra`` tensors by name, copied to the CPU (what ``EXTRAS`` holds)."""
    return {name: e.param.detach().cpu().contiguous() for name, e in extras.items()}


def save_final(root: Path, step: int, unet: torch.nn.Module, cfg: StageConfig,
               extras: Mapping[str, Any] | None = None) -> Path:
    """The trained weights alone as checkpoint ``root/step-<step>``, marked final (no optimizer state)."""
    weights = trainable_state(unet, cfg.full)
    with new_checkpoint(root, step, cfg.keep_checkpoints, on_write=_written) as tmp:
        save_file(weights, str(tmp / "weights.safetensors"))
        if extras:
            save_file(extra_state(extras), str(tmp / EXTRAS))
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "bad_steps": 0, "final": True}))
    return root / f"step-{step}"


def latest(root: Path) -> Path | None:
    steps = checkpoint_steps(root)
    return root / f"step-{steps[-1]}" if steps else None


def trained_tensors(unet: torch.nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds, as references on their device (no copy, unlike ``trainable_state``)."""
    if full:
        return dict(unet.state_dict())
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


def _check_shapes(folder: Path, unet: torch.nn.Module, state: dict[str, torch.Tensor], full: bool) -> None:
    expected = {k: tuple(v.shape) for k, v in trained_tensors(unet, full).items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if saved == expected:
        return
    name = next(k for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k))
    raise RunError(
        f"{folder} holds different trainable weights than this model ('{name}': {saved.get(name)} saved, "
        f"{expected.get(name)} expected): lora_rank or full fine-tuning changed. Such a change cannot be "
        "resumed, even with --allow-drift; start over with --force."
    )


def _restore_extras(folder: Path, extras: Mapping[str, Any]) -> None:
    """Copy the checkpoint's ``EXTRAS`` into the job's; a checkpoint of another setting is refused by name."""
    path = folder / EXTRAS
    saved = load_state_dict(path) if path.exists() else {}
    if set(saved) != set(extras) or any(saved[k].shape != extras[k].param.shape for k in saved):
        raise RunError(f"{folder} holds {sorted(saved) or 'no'} trained tensors outside the UNet, this run trains "
                       f"{sorted(extras) or 'none'}: identifier.offset_lr changed, which cannot be resumed; start "
                       "over with --force")
    with torch.no_grad():
        for name, value in saved.items():
            extras[name].param.copy_(value)


def restore(root: Path, job, optimizer, full: bool, scaler=None) -> Restored | None:
    """Load the newest complete checkpoint into job/optimizer (and fp16's scaler); None if there is none.

    The LR schedule is the caller's to rebuild at ``Restored.updates`` (its ``last_epoch`` when saved).
    """
    folder = latest(root)
    if folder is None:
        return None
    try:
        weights = load_state_dict(folder / "weights.safetensors")  # the one loader: a damaged file is named
        trainer = json.loads((folder / "trainer.json").read_text())
        final = bool(trainer.get("final"))
        opt_state = None if final else _unflatten_optimizer(load_state_dict(folder / "optimizer.safetensors"),
                                                            trainer["optimizer"])
        updates = 0 if final else int(trainer["schedule"]["last_epoch"])
    except (InputError, OSError, KeyError, ValueError, SafetensorError) as err:
        raise RunError(f"{folder}: checkpoint cannot be read ({err}); delete it to resume from an older one") from None
    _check_shapes(folder, job.unet, weights, full)
    load_trainable_state(job.unet, weights, full)
    _restore_extras(folder, job.extras)
    if final:
        return Restored(int(trainer["step"]), 0, folder, final=True)
    optimizer.load_state_dict(opt_state)
    if scaler is not None and trainer.get("scaler"):
        scaler.load_state_dict(trainer["scaler"])
    return Restored(int(trainer["step"]), int(trainer.get("bad_steps", 0)), folder, updates=updates)
