"""Shard ``evaluate`` across processes: each embeds its share of the images, all get every row.

Embedding (DINO and CLIP images, CLIP texts) is the only expensive part of the section 4.1 metrics.
Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) every call of an extractor's
``embed_images`` / ``embed_texts`` is split into contiguous slices, one per process; the slices are
all-gathered and concatenated in order, so each process holds exactly the rows a single process
would compute (up to float rounding from different batch shapes). Sharding is by image inside each
call, so a single subject, and every subject of a DreamBench run, spreads over all processes.
Scoring on the gathered embeddings is cheap and deterministic; only the main process writes files.

A single process never touches ``torch.distributed``: :func:`sharding` yields :data:`SINGLE` and
:meth:`Shard.wrap` returns the extractors unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from cascade_booth.errors import BoothError
from cascade_booth.parallel import launched_world_size, leave, local_rank


def shard_range(n: int, rank: int, world_size: int) -> range:
    """The contiguous slice of ``n`` items process ``rank`` embeds; slices cover 0..n in order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class Shard:
    """This process's place among the evaluating processes."""

    rank: int = 0
    world_size: int = 1
    all_gather: Callable[[object], list] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, *extractors):
        """Extractors that embed only this process's slice and gather the rest (unchanged if alone)."""
        if self.world_size == 1:
            return extractors
        return tuple(ShardedExtractor(extractor, self) for extractor in extractors)


SINGLE = Shard()


def _all_gather_object(obj: object) -> list:
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@contextlib.contextmanager
def sharding(device: torch.device) -> Iterator[Shard]:
    """Join the launched processes (``accelerate.PartialState``) or yield :data:`SINGLE` when alone.

    The process group always uses gloo: only CPU tensors (embeddings) are gathered, and gloo lets
    several processes share one GPU. ``device`` tells accelerate whether this is a CPU-only run. The
    process group is torn down on exit.
    """
    if launched_world_size() == 1:
        yield SINGLE
        return
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu", backend="gloo")
    try:
        yield Shard(rank=state.process_index, world_size=state.num_processes, all_gather=_all_gather_object)
    finally:
        leave()


def shard_device(device: torch.device) -> torch.device:
    """Under a launcher, a bare ``cuda`` device means this process's GPU (``cuda:LOCAL_RANK``)."""
    if launched_world_size() > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
    return device


class ShardedExtractor:
    """An extractor whose ``embed_images`` / ``embed_texts`` run on this process's slice only."""

    def __init__(self, inner, shard: Shard):
        self.inner, self.shard = inner, shard

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def embed_images(self, images: Sequence, batch_size: int = 16) -> torch.Tensor:
        return self._sharded(self.inner.embed_images, list(images), batch_size)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return self._sharded(self.inner.embed_texts, list(texts), batch_size)

    def describe(self) -> dict:
        return self.inner.describe()

    def _sharded(self, embed: Callable, items: list, batch_size: int) -> torch.Tensor:
        if not items:  # same error as the unsharded extractor, on every process
            return embed(items, batch_size=batch_size)
        mine = [items[i] for i in shard_range(len(items), self.shard.rank, self.shard.world_size)]
        try:  # an error on one process is raised on all of them, so none waits forever
            local = (embed(mine, batch_size=batch_size).cpu() if mine else None), None
        except Exception as err:  # noqa: BLE001 - re-raised below, on every process
            local = None, err if isinstance(err, BoothError) else RuntimeError(f"{type(err).__name__}: {err}")
        parts = self.shard.all_gather(local)
        for _, err in parts:
            if err is not None:
                raise err
        return torch.cat([rows for rows, _ in parts if rows is not None])
