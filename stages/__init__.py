"""One module per stage of the cascade, picked by name from a small registry."""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES = {"base": "stages.base", "sr": "stages.sr"}


def get_stage(name: str) -> ModuleType:
    """The stage module (``prepare``/``run``) registered under ``name``."""
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}' (known: {', '.join(STAGES)})")
    return importlib.import_module(STAGES[name])


def run_stage(name: str, request, bar=None, class_progress=None):
    """Train stage ``name`` for a client (CLI, sweep, UI); returns its ``RunContext``.

    ``bar`` is a trainer progress object with ``build() -> trainer.Callbacks`` and ``close()``
    (``clikit.TqdmCallbacks``), closed whatever happens; ``class_progress`` a ``(done, total)`` hook
    for class-image generation.
    """
    try:
        return get_stage(name).run(request, bar.build() if bar else None, progress=class_progress)
    finally:
        if bar is not None:
            bar.close()
