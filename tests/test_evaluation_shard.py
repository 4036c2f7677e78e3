"""``evaluate`` sharded across processes: slices, gathering, and 2 CPU processes vs 1 (same metrics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_evaluation_dreambench import make_dreambench, make_generated, model_args

from cascade_booth.errors import InputError
from cascade_booth.evaluation.cli import evaluate
from cascade_booth.evaluation.distributed import (
    SINGLE,
    Shard,
    ShardedExtractor,
    launched_world_size,
    shard_range,
    sharding,
)
from cascade_booth.evaluation.tiny import build_tiny_models

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_ranges_cover_the_items_in_order(n, world):
    ranges = [shard_range(n, rank, world) for rank in range(world)]
    assert [i for r in ranges for i in r] == list(range(n))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


class RowExtractor:
    """Embeds item ``k`` as the row ``[k, 1]``; fails on "bad"; records what it was asked for."""

    def __init__(self):
        self.calls: list[list] = []

    def embed_images(self, items, batch_size=16):
        self.calls.append(list(items))
        if "bad" in items:
            raise InputError("bad: cannot read image")
        if not items:
            raise ValueError("embed_images: no images")
        return torch.tensor([[float(k), 1.0] for k in items])

    embed_texts = embed_images

    def describe(self):
        return {"id": "rows"}


def _sharded(world: int, rank: int, inner: RowExtractor) -> ShardedExtractor:
    """Process ``rank`` of ``world``; the other processes are simulated by the fake gather."""
    def all_gather(local):
        parts = []
        for other in range(world):
            if other == rank:
                parts.append(local)
                continue
            items = [gather_items[i] for i in shard_range(len(gather_items), other, world)]
            try:
                parts.append((RowExtractor().embed_images(items, 2) if items else None, None))
            except InputError as err:
                parts.append((None, err))
        return parts

    gather_items: list = []
    extractor = ShardedExtractor(inner, Shard(rank=rank, world_size=world, all_gather=all_gather))
    extractor.set_items = gather_items.extend  # the fake needs the full list, as every process has it
    return extractor


@pytest.mark.parametrize("world, rank", [(2, 0), (2, 1), (3, 2), (4, 3)])
def test_sharded_extractor_embeds_its_slice_and_gathers_rows_in_order(world, rank):
    items = list(range(7))
    inner = RowExtractor()
    extractor = _sharded(world, rank, inner)
    extractor.set_items(items)
    rows = extractor.embed_images(items, batch_size=2)
    assert rows[:, 0].tolist() == [float(k) for k in items]
    assert inner.calls == [[items[i] for i in shard_range(7, rank, world)]]
    assert extractor.describe() == {"id": "rows"} and extractor.calls is inner.calls


def test_an_error_on_another_process_is_raised_on_every_process():
    items = [0, 1, 2, "bad"]  # the last item lands on process 1 of 2
    extractor = _sharded(2, 0, RowExtractor())
    extractor.set_items(items)
    with pytest.raises(InputError, match="bad: cannot read image"):
        extractor.embed_images(items)


def test_one_process_needs_no_distributed_setup(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert launched_world_size() == 1
    inner = (RowExtractor(), RowExtractor())
    with sharding(torch.device("cpu")) as shard:
        assert shard is SINGLE and shard.is_main and shard.wrap(*inner) == inner
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    return {"tiny": build_tiny_models(root / "tiny"), "bench": make_dreambench(root / "db"),
            "gen": make_generated(root / "gen")}


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "cascade_booth.cli", "evaluate", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("mode", ["dreambench", "one_subject"])
def test_two_processes_give_the_single_process_metrics(setup, tmp_path, mode):
    bench, gen = setup["bench"], setup["gen"]
    inputs = (["--dreambench", str(bench), "--generated", str(gen)] if mode == "dreambench"
              else ["--generated", str(gen / "dog"), "--subject", str(bench / "dog")])
    args = [*inputs, *model_args(setup["tiny"]), "--batch-size", "3"]
    one = CliRunner().invoke(evaluate, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output + repr(one.exception)
    two = _torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("wrote json") == 1  # only the main process reports and writes
    expected, got = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert (expected["settings"]["processes"], got["settings"]["processes"]) == (1, 2)
    assert expected["per_subject"].keys() == got["per_subject"].keys()
    for name, row in expected["per_subject"].items():
        for key in ("dino", "clip_i", "clip_t", "pres", "div"):
            assert got["per_subject"][name][key] == pytest.approx(row[key], abs=1e-5), (name, key)
    assert [r["path"] for r in got["per_image"]] == [r["path"] for r in expected["per_image"]]
    for a, b in zip(expected["per_image"], got["per_image"], strict=True):
        keys = ("dino", "clip_i", "clip_t")
        assert [b[k] for k in keys] == pytest.approx([a[k] for k in keys], abs=1e-5)
    if mode == "dreambench":
        for name in expected["benchmark"]["evaluated"]:
            sub = json.loads((tmp_path / "two" / "subjects" / name / "metrics.json").read_text())
            assert sub["overall"]["dino"] == pytest.approx(expected["per_subject"][name]["dino"], abs=1e-5)
