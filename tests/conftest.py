"""Test session set-up: offline, one shared temporary cache (tiny cascade, class images, embeddings)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLOCK = REPO / "cascade_booth" / "data" / "clock"
SHARED = REPO.parent / "shared"

pytest_plugins = ["helpers_reliability"]  # its ``env`` fixture serves the reliability tests


def pytest_configure(config) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if not os.environ.get("CASCADE_BOOTH_TEST_KEEP_CACHE"):
        os.environ["CASCADE_BOOTH_CACHE"] = tempfile.mkdtemp(prefix="cascade-booth-cache-")


def pytest_unconfigure(config) -> None:
    cache = os.environ.get("CASCADE_BOOTH_CACHE", "")
    if "cascade-booth-cache-" in cache and not os.environ.get("CASCADE_BOOTH_TEST_KEEP_CACHE"):
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_paths() -> dict[str, Path]:
    from cascade_booth.models import resolve_model

    return {"base": resolve_model("tiny", 1), "sr": resolve_model("tiny", 2)}


@pytest.fixture
def clock_subject(tmp_path: Path) -> Path:
    """A private copy of the bundled clock photos (3 of them, for speed)."""
    folder = tmp_path / "clock"
    folder.mkdir()
    for src in sorted(CLOCK.glob("*.jpg"))[:3]:
        shutil.copy(src, folder / src.name)
    return folder


def tiny_config(**base):
    from cascade_booth.config import load_config

    cfg = load_config("tiny")
    cfg.prior.class_images = 2
    cfg.base.checkpoint_every = 0
    for key, value in base.items():
        setattr(cfg.base, key, value)
    return cfg


def job_losses(job, batch, **settings):
    """A stage Job's per-sample losses on ``batch`` with ``settings`` set on the job first, always from the same
    generator (seed 3), so two calls differ by the settings alone."""
    import torch

    for name, value in settings.items():
        setattr(job, name, value)
    with torch.no_grad():
        return job.losses(job.unet, batch, torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def one_thread():
    """Two OpenMP threads on a busy 2-core machine can be 100x slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clock_photos(folder: Path, count: int = 3) -> Path:
    """The first ``count`` bundled DreamBench clock photos, copied into ``folder``."""
    for src in sorted(CLOCK.glob("*.jpg"))[:count]:
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory) -> Path:
    """A finished stage one (tiny cascade, 1 step, prior on with 2 class images) on 3 clock photos."""
    from cascade_booth.session import TrainRequest
    from stages.base import run as train_base

    subject = clock_photos(tmp_path_factory.mktemp("subject"))
    run = tmp_path_factory.mktemp("runs") / "stage-one"
    train_base(TrainRequest(subject=subject, class_noun="clock", run=run, config=tiny_config(steps=1)))
    return run
