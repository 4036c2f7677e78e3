"""Shared pieces of the reliability tests (resume, checkpoints, faults, locks).

Imported by ``tests/test_resume.py``, ``tests/test_checkpoints.py`` and ``tests/test_reliability.py``;
also a script (``python tests/helpers_reliability.py cli ...``) that runs the real CLI in a child
process with test hooks: pause after a training step or a class image (so the test can signal it at a
known point), SIGKILL itself at a checkpoint file, or fill a class-image cache in lock step with
another process.

Every run uses one thread and seeds the global RNG first: ``lora.add_lora`` draws the adapter's
initial weights from the global RNG, so without that an in-process run and a child-process run of
the same config would start from different weights.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SUBJECT = REPO / "cascade_booth" / "data" / "clock"
WAIT_S = 240

CONFIG_TOML = """
seed = 0
[model]
base = "tiny"
sr = "tiny"
upscaler = "none"
[prior]
class_images = 2
sampler = "dpm++"
sample_steps = 2
guidance = 7.0
batch_size = 1
[base]
steps = 4
batch_size = 1
lr = 1e-4
lora_rank = 4
warmup_steps = 2
checkpoint_every = 2
keep_checkpoints = 2
"""


@functools.lru_cache(maxsize=1)
def shared_dir() -> Path:
    """One folder per test process: the warm cache (tiny models, embeddings, class images) and the config."""
    root = Path(tempfile.mkdtemp(prefix="cb-reliability-"))
    atexit.register(shutil.rmtree, root, True)
    (root / "cache").mkdir()
    (root / "reliability.toml").write_text(CONFIG_TOML)
    return root


def config_path() -> Path:
    return shared_dir() / "reliability.toml"


def config(**base):
    """The test config (4 steps, checkpoints every 2, 2 class images) with ``[base]`` overrides."""
    from cascade_booth.config import load_config

    cfg = load_config(str(config_path()))
    for key, value in base.items():
        setattr(cfg.base, key, value)
    return cfg


@contextlib.contextmanager
def booth_env(cache: Path | None = None):
    """Offline, one thread, ``CASCADE_BOOTH_CACHE`` = ``cache`` (the shared warm cache by default)."""
    values = {"HF_HUB_OFFLINE": "1", "CASCADE_BOOTH_CACHE": str(cache or shared_dir() / "cache"),
              "TOKENIZERS_PARALLELISM": "false"}
    old = {k: os.environ.get(k) for k in values}
    threads = torch.get_num_threads()
    os.environ.update(values)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def train(run: Path, cfg=None, resume: bool = False, callbacks=None, **request):
    """Stage one in this process (``stages.base.run``), global RNG seeded as in the child processes."""
    from cascade_booth.session import TrainRequest
    from stages import base

    torch.manual_seed(0)
    req = TrainRequest(subject=request.pop("subject", SUBJECT), class_noun="clock", run=Path(run),
                       config=cfg or config(), resume=resume, **request)
    return base.run(req, callbacks)


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "base" / "pytorch_lora_weights.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bitwise equality of two state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@functools.lru_cache(maxsize=1)
def reference_run() -> Path:
    """An uninterrupted run of the test config. Copy it before changing it.

    A one-step run first warms the shared cache: building the tiny cascade reseeds the global RNG,
    so the LoRA initialisation of the process that builds it differs (see the module docstring).
    """
    run = shared_dir() / "reference"
    with booth_env():
        train(shared_dir() / "warmup", config(steps=1, checkpoint_every=0))
        train(run)
    return run


def reference() -> dict[str, torch.Tensor]:
    return weights(reference_run())


def copy_run(dest: Path) -> Path:
    shutil.copytree(reference_run(), dest)
    return dest


def fresh_cache(dest: Path) -> Path:
    """A cache holding the tiny models only: class images and embeddings get new keys (new model path)."""
    reference_run()
    shutil.copytree(shared_dir() / "cache" / "models", dest / "models")
    return dest


def class_image_folder(cache: Path) -> Path:
    (folder,) = (cache / "class_images").iterdir()
    return folder


# ---------------------------------------------------------------- child processes


def child_env(cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CASCADE_BOOTH_CACHE=str(cache or shared_dir() / "cache"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def cli_args(run: Path, *extra: str) -> list[str]:
    return ["train-base", "--config", str(config_path()), "--subject", str(SUBJECT), "--class-noun", "clock",
            "--run", str(run), *extra]


def start_cli(args: list[str], *hooks: str, cache: Path | None = None) -> subprocess.Popen:
    """Start ``cascade-booth ARGS`` in a child through this script; ``hooks`` e.g. ``--pause step:3 MARKER``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "cli", *hooks, "--", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:  # a child of a background job would otherwise ignore SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Wait until ``path`` exists; fail with the child's output if it exits first."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"child exited ({proc.returncode}) before {path.name}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for the child; returns (exit code, stdout + stderr)."""
    try:
        out, err = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out + err


def signal_at_pause(proc: subprocess.Popen, marker: Path, sig: int) -> tuple[int, str]:
    """Wait for the child's pause, send ``sig``, let it go on, and wait for it to exit."""
    wait_for(marker, proc)
    os.kill(proc.pid, sig)
    time.sleep(0.3)  # the handler runs before the child sees the go file
    marker.with_name(marker.name + ".go").touch()
    return finish(proc)


# ---------------------------------------------------------------- the child side


def _wait_go(marker: Path) -> None:
    marker.touch()
    go = marker.with_name(marker.name + ".go")
    deadline = time.monotonic() + WAIT_S
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _install_pause(spec: str, marker: Path) -> None:
    """``step:K``: pause after training step K; ``image:K``: after the K-th class image is written."""
    kind, count = spec.split(":")
    if kind == "step":
        from cascade_booth import clikit

        step = clikit.TqdmCallbacks.step

        def paused_step(self, done, loss, lr):
            step(self, done, loss, lr)
            if done == int(count):
                _wait_go(marker)

        clikit.TqdmCallbacks.step = paused_step
        return
    from cascade_booth import prior

    save, written = prior._save_png, []

    def paused_save(image, path):
        save(image, path)
        written.append(path)
        if len(written) == int(count):
            _wait_go(marker)

    prior._save_png = paused_save


def _install_kill(spec: str) -> None:
    """``STEP:NAME``: SIGKILL this process right after ``NAME`` of checkpoint ``step-STEP`` is written."""
    from cascade_booth import checkpoint

    step, name = spec.split(":")

    def kill(path: Path) -> None:
        in_step = path.name == f"step-{step}" or path.parent.name.startswith(f".step-{step}.")
        if in_step and path.name == name:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.WRITE_HOOK = kill


def _child_cli(argv: list[str]) -> None:
    split = argv.index("--")
    hooks, args = argv[:split], argv[split + 1:]
    while hooks:
        flag = hooks.pop(0)
        if flag == "--pause":
            _install_pause(hooks.pop(0), Path(hooks.pop(0)))
        elif flag == "--kill-at":
            _install_kill(hooks.pop(0))
    from cascade_booth.cli import main

    main(args, prog_name="cascade-booth")


def _child_class_images(config_file: str, barrier: str) -> None:
    """Fill the class-image cache at the same moment as another process; print how many images this one
    generated."""
    from diffusers import UNet2DConditionModel  # noqa: F401 - imported before the barrier, not after

    from cascade_booth import prior
    from cascade_booth.config import load_config
    from cascade_booth.models import cache_dir, resolve_model
    from cascade_booth.text import TextEmbeddings

    cfg = load_config(config_file)
    model = resolve_model("tiny", stage=1)
    texts = TextEmbeddings(model, cache_dir())
    made: list[int] = []
    prior._sample = counting_sample(prior._sample, made)
    _wait_go(Path(barrier))
    paths = prior.class_images(model, "a clock", cfg.prior, cfg.seed, cache_dir(), texts)
    print("MADE", len(made), "PATHS", ",".join(p.name for p in paths))


def counting_sample(sample, made: list[int]):
    """Wrap ``prior._sample``: record the indices generated, and take a while (a wide window for a race)."""

    def slow_sample(pipe, prompt, texts, seed, indices, *args):
        made.extend(indices)
        time.sleep(0.5)
        return sample(pipe, prompt, texts, seed, indices, *args)

    return slow_sample


def start_class_images(cache: Path, barrier: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "class-images", str(config_path()), str(barrier)]
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if sys.argv[1] == "cli":
        _child_cli(sys.argv[2:])
    elif sys.argv[1] == "class-images":
        _child_class_images(sys.argv[2], sys.argv[3])


@pytest.fixture
def env():
    """Offline, seeded environment with the shared cache warmed by the reference run."""
    reference_run()
    with booth_env():
        yield
