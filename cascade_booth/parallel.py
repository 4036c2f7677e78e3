"""Several processes (``accelerate launch``, ``torchrun``): who does what before and after training.

A launcher starts the same command once per GPU (or per CPU process, over gloo). The main process
alone owns the run folder: its lock, ``run.json``, checkpoints and the final weights; the others
read what it wrote. Shared work before training (class images) is split by rank. In a plain
single-process run nothing here starts a process group, so that path is exactly as before.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import TypeVar

import torch

from cascade_booth.devices import use_cpu
from cascade_booth.errors import RunError

T = TypeVar("T")
_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class MainProcessFailed(RunError):
    """Raised on the other processes when the main process failed a step they all wait for."""


def launched_world_size() -> int:
    """How many processes the launcher started (1 when not launched by accelerate, torchrun or MPI)."""
    for name in _WORLD_ENV:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return max(1, int(value))
    return 1


def launched() -> bool:
    """Whether a launcher started several processes (its environment says so)."""
    return launched_world_size() > 1


def launched_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``), also before any process group exists."""
    value = os.environ.get("RANK", "").strip()
    return int(value) if value.isdigit() and launched() else rank()


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 when not launched)."""
    value = os.environ.get("LOCAL_RANK", "").strip()
    return int(value) if value.isdigit() else 0


def init() -> None:
    """Join the launcher's process group now, before the run folder is touched.

    This is the state accelerate's ``Accelerator`` reuses later (same ``cpu`` flag as the trainer's),
    so the group is created once.
    """
    if launched():
        from accelerate import PartialState

        PartialState(cpu=use_cpu())
        atexit.unregister(leave)  # once per process, however many stages it runs
        atexit.register(leave)


def leave() -> None:
    """Tear this process's group down, if it has one. Launched runs do it at exit (``init``): a gloo group left
    to interpreter exit can abort the process ("terminate called without an active exception", exit -6)
    after its work is done."""
    if active():
        torch.distributed.destroy_process_group()


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (any picklable object)."""
    if not active():
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def main_first(fn: Callable[[], T], others: Callable[[], T]) -> T:
    """``fn()`` on the main process; once it succeeded, ``others()`` on the rest.

    If ``fn`` raises, the main process re-raises and the others raise ``MainProcessFailed`` instead
    of waiting for a result that never comes.
    """
    if not active():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below, after telling the others
            error = err
    failure = broadcast(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failure is not None:
        raise MainProcessFailed(f"stopped because the main process failed ({failure})")
    return result if is_main() else others()  # type: ignore[return-value]


def shard(items: list[T]) -> list[T]:
    """This process's share of ``items``: every ``world()``-th one from its rank on."""
    return items[rank()::world()]
