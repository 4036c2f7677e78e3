"""Resolve a model spec (``tiny``, a hub id, a local diffusers folder) to a local folder, offline-safe.

Loading what is in it is ``cascade_booth.safeload``'s job: every weight file goes through there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cascade_booth.errors import ModelNotFoundError
from cascade_booth.tiny import ensure_tiny_cascade


def cache_dir() -> Path:
    """Shared cache for models, class images and text embeddings (``CASCADE_BOOTH_CACHE``)."""
    root = os.environ.get("CASCADE_BOOTH_CACHE") or Path.home() / ".cache" / "cascade-booth"
    return Path(root)


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(var, "0").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(spec: str, stage: int) -> Path:
    """Return the local folder holding the diffusers pipeline for ``spec``.

    ``stage`` (1 or 2) picks the tiny cascade's half. Hub ids are looked up in the local Hugging Face
    cache first; with ``HF_HUB_OFFLINE=1`` a missing model is a clear error naming the download command.
    """
    if spec == "tiny":
        return ensure_tiny_cascade(cache_dir()) / f"stage{stage}"
    if spec == "world":
        return world_model(stage)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file() or not (path / "unet" / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a diffusers pipeline folder (needs model_index.json and unet/)")
        return path.resolve()
    if spec.count("/") != 1:
        raise ModelNotFoundError(f"model '{spec}': no such folder, and not a hub id of the form owner/name")
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["model_index.json", "*/*.json", "*/*.model", "*/*.txt", "*.safetensors", "*/*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline()))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, HfHubHTTPError) as err:
        from cascade_booth.presets import offline_presets

        hint = f"huggingface-cli download {repo_id}" if offline() else "check the id and your hub login/licence"
        presets = " or ".join(f"--config {name}" for name in offline_presets())
        raise ModelNotFoundError(
            f"model '{repo_id}' is not available{' offline' if offline() else ''}: "
            f"{type(err).__name__}. Get it with `{hint}` or pass a local diffusers folder"
            + (f"; presets that need no hub: {presets}." if presets else ".")
        ) from None


def model_fingerprint(path: Path) -> str:
    """A short key for caches: the UNet and text encoder configs and the folder identity."""
    h = hashlib.sha256(str(path.resolve()).encode())
    for sub in ("unet/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        f = path / sub
        if f.is_file():
            h.update(json.dumps(json.loads(f.read_text()), sort_keys=True).encode())
    return h.hexdigest()[:16]


def world_model(stage: int) -> Path:
    """The shipped world cascade's stage (``cascade_booth/world/models/base`` or ``sr``)."""
    from cascade_booth.world.cascade import SHIPPED

    folder = SHIPPED / ("base" if stage == 1 else "sr")
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"{folder}: the world cascade is not in this install; pretrain it with "
            "`python tools/pretrain_world.py --model base|sr` then `--export`, or use --config tiny"
        )
    return folder
