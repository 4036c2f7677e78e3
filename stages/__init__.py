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
